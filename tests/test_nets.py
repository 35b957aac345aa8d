"""Networks and the VAE: shapes for both architectures, data-range outputs, learned σ."""

import pytest
import torch

from vaelab.nets import build_nets
from vaelab.nets.conv import downsampling_plan
from vaelab.vae import LOGVAR_RANGE, VAE


@pytest.mark.parametrize(
    "net,shape",
    [("mlp", (1, 28, 28)), ("conv", (1, 28, 28)), ("conv", (3, 64, 64)), ("mlp", (3, 64, 64))],
)
def test_encoder_decoder_shapes(net, shape):
    enc, dec = build_nets(net, shape, latent_dim=5, hidden_dims=(32,), channels=(8, 16, 32, 64))
    x = torch.rand(3, *shape)
    mu, logvar = enc(x)
    assert mu.shape == logvar.shape == (3, 5)
    assert dec(mu).shape == (3, *shape)


def test_conv_plan_depends_on_side():
    assert downsampling_plan(64, (32, 64, 128, 256)) == [32, 64, 128, 256]
    assert downsampling_plan(28, (32, 64, 128, 256)) == [32, 64]
    with pytest.raises(ValueError, match="even image side"):
        downsampling_plan(7, (32,))


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("net,shape", [("mlp", (1, 28, 28)), ("conv", (3, 64, 64))])
def test_vae_outputs_lie_in_data_range(net, shape, likelihood):
    torch.manual_seed(0)
    vae = VAE(
        shape,
        latent_dim=4,
        net=net,
        likelihood=likelihood,
        hidden_dims=(16,),
        channels=(8, 8, 8, 8),
    )
    with torch.no_grad():  # push logits far out: the mean must still be a valid pixel value
        vae.decoder.net[-1].bias.fill_(50.0)
    x = torch.rand(2, *shape)
    for images in (vae.reconstruct(x), vae.sample(3)):
        assert images.shape[1:] == shape
        assert images.min() >= 0.0 and images.max() <= 1.0


def test_forward_gives_per_example_terms_and_finite_loss():
    torch.manual_seed(0)
    vae = VAE((1, 28, 28), latent_dim=3, hidden_dims=(16,))
    terms = vae(torch.rand(6, 1, 28, 28))
    assert terms.recon.shape == terms.kl.shape == (6,)
    assert (terms.kl >= 0).all()
    assert torch.isfinite(terms.elbo()).all()
    torch.testing.assert_close(terms.elbo(beta=0.0), terms.recon)


def test_logvar_is_clamped_to_safe_range():
    vae = VAE((1, 28, 28), latent_dim=2, hidden_dims=(8,))
    with torch.no_grad():
        vae.encoder.net[-1].bias.fill_(1e4)
    _, logvar = vae.encode(torch.rand(2, 1, 28, 28))
    assert logvar.max().item() == LOGVAR_RANGE[1]


def test_learned_sigma_is_a_trained_parameter_fixed_sigma_a_buffer():
    learned = VAE((1, 28, 28), 2, hidden_dims=(8,), learn_sigma=True, sigma=0.2)
    fixed = VAE((1, 28, 28), 2, hidden_dims=(8,), learn_sigma=False, sigma=0.2)
    assert "likelihood.log_sigma" in dict(learned.named_parameters())
    assert "likelihood.log_sigma" not in dict(fixed.named_parameters())
    assert "likelihood.log_sigma" in fixed.state_dict()
    assert learned.likelihood.sigma == pytest.approx(0.2)


def test_sample_temperature_scales_prior_draws():
    vae = VAE((1, 28, 28), latent_dim=2, hidden_dims=(8,))
    z1 = vae.prior_sample(5, 1.0, generator=torch.Generator().manual_seed(3))
    z2 = vae.prior_sample(5, 0.5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(z2, 0.5 * z1)
