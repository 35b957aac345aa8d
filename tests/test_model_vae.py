"""The composed VAE against manual computations with its own sub-networks: one and two stochastic
layers, generation, conditioning, option checks, and every net × likelihood × prior × objective."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.distributions import Normal

from vaelab.errors import UserError
from vaelab.model import elbo
from vaelab.model.parts import build
from vaelab.model.vae import VAE

CONF = Path(__file__).resolve().parents[1] / "conf"
MLP = {"_target_": "vaelab.model.nets.mlp.MLP", "hidden": [8]}
TOP = {"_target_": "vaelab.model.nets.mlp.MLP", "hidden": [5], "activation": "tanh"}
GAUSSIAN = {"_target_": "vaelab.model.likelihoods.gaussian.Gaussian", "sigma": 0.3}
NORMAL = {"_target_": "vaelab.model.priors.normal.StandardNormal"}
SHAPE = (1, 4, 4)


def tiny_vae(latent_dims=3, seed=0, **kw) -> VAE:
    torch.manual_seed(seed)
    options = {"net": MLP, "likelihood": GAUSSIAN, "prior": NORMAL, **kw}
    return VAE(SHAPE, latent_dims, **options)


@pytest.fixture
def x():
    return torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(1))


def gaussian_params(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu, logvar = h.chunk(2, dim=-1)
    return mu, logvar.clamp(-20.0, 10.0)


def log_normal(z, mu, logvar):
    return Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)


def log_px_manual(vae: VAE, x: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    """log N(x; sigmoid(decoder(z₁)), σ²) summed over pixels, for z₁ of shape (k, B, D₁)."""
    k, b, d = z1.shape
    params = vae.decoders[0](z1.reshape(k * b, d)).view(k, b, *x.shape[1:])
    sigma = GAUSSIAN["sigma"]
    return Normal(torch.sigmoid(params), sigma).log_prob(x.expand(k, *x.shape)).sum((-3, -2, -1))


# -- one stochastic layer ------------------------------------------------------------------------------
def test_one_layer_kl_is_the_closed_form_and_kl_mc_converges_to_it(x):
    vae = tiny_vae()
    with torch.no_grad():
        mu, logvar = gaussian_params(vae.encoders[0](x))
        out = vae(x, k=20_000)
    closed = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    torch.testing.assert_close(out.kl_dims, closed)
    torch.testing.assert_close(out.kl, closed.sum(-1))
    torch.testing.assert_close(out.mu, mu)
    assert out.kl.shape == (x.shape[0],) and out.kl_dims.shape == (x.shape[0], 3)
    error = (out.log_qz - out.log_pz).std(0) / math.sqrt(20_000)
    assert ((out.kl_mc - out.kl).abs() < 4 * error).all(), (out.kl_mc, out.kl, error)
    with torch.no_grad():
        few = vae(x, k=10)
    assert not torch.allclose(few.kl_mc, few.kl)  # it is an estimate, not the closed form


def test_one_layer_log_w_matches_a_manual_computation(x):
    vae, k = tiny_vae(), 4
    torch.manual_seed(3)
    out = vae(x, k=k)
    torch.manual_seed(3)
    with torch.no_grad():
        mu, logvar = gaussian_params(vae.encoders[0](x))
        z = mu + (0.5 * logvar).exp() * torch.randn(k, *mu.shape)
        log_q = log_normal(z, mu, logvar)
        log_p = Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_px = log_px_manual(vae, x, z)
    assert out.log_w.shape == (k, x.shape[0])
    torch.testing.assert_close(out.log_qz, log_q)
    torch.testing.assert_close(out.log_pz, log_p)
    torch.testing.assert_close(out.log_px, log_px)
    torch.testing.assert_close(out.log_w, log_px + log_p - log_q)
    torch.testing.assert_close(out.kl_mc, (log_q - log_p).mean(0))
    params = vae.decoders[0](z[0])
    torch.testing.assert_close(out.params, params)  # the first sample's decoder output


def test_encode_and_reconstruct_use_the_posterior_mean(x):
    vae = tiny_vae()
    mu, logvar = gaussian_params(vae.encoders[0](x))
    got_mu, got_logvar = vae.encode(x)
    torch.testing.assert_close(got_mu, mu)
    torch.testing.assert_close(got_logvar, logvar)
    torch.testing.assert_close(vae.reconstruct(x), torch.sigmoid(vae.decoders[0](mu)))
    assert vae.latent_dim == 3 and vae.latent_dims == [3]


# -- two stochastic layers -----------------------------------------------------------------------------
def test_two_layer_densities_match_manual_computations(x):
    vae, k = tiny_vae(latent_dims=[3, 2], top_net=TOP), 3
    assert len(vae.encoders) == 2 and len(vae.decoders) == 2
    torch.manual_seed(5)
    out = vae(x, k=k)
    torch.manual_seed(5)
    with torch.no_grad():
        mu1, logvar1 = gaussian_params(vae.encoders[0](x))  # q(z₁|x)
        z1 = mu1 + (0.5 * logvar1).exp() * torch.randn(k, *mu1.shape)
        mu2, logvar2 = gaussian_params(vae.encoders[1](z1.reshape(-1, 3)).view(k, -1, 4))  # q(z₂|z₁)
        z2 = mu2 + (0.5 * logvar2).exp() * torch.randn(k, x.shape[0], 2)
        pm1, plogvar1 = gaussian_params(vae.decoders[1](z2.reshape(-1, 2)).view(k, -1, 6))  # p(z₁|z₂)
        log_q = log_normal(z1, mu1, logvar1) + log_normal(z2, mu2, logvar2)
        log_p = Normal(0.0, 1.0).log_prob(z2).sum(-1) + log_normal(z1, pm1, plogvar1)
        log_px = log_px_manual(vae, x, z1)
    torch.testing.assert_close(out.log_qz, log_q)
    torch.testing.assert_close(out.log_pz, log_p)
    torch.testing.assert_close(out.log_px, log_px)
    torch.testing.assert_close(out.mu, mu1)
    assert out.kl is None and out.kl_dims is None  # no closed form across layers
    assert out.kl_mc.shape == (x.shape[0],)
    assert vae.latent_dim == 2 and vae.prior.latent_dim == 2  # the prior sits on the top layer


def test_two_layer_encode_follows_the_posterior_means_to_the_top(x):
    vae = tiny_vae(latent_dims=[3, 2], top_net=TOP)
    mu1, _ = gaussian_params(vae.encoders[0](x))
    mu2, logvar2 = gaussian_params(vae.encoders[1](mu1))
    got = vae.encode(x)
    torch.testing.assert_close(got[0], mu2)
    torch.testing.assert_close(got[1], logvar2)


@pytest.mark.parametrize("dims", [3, [3, 2]])
def test_sticking_the_landing_keeps_the_values_and_the_expected_gradient(x, dims):
    """stl only drops the score term E_q ∇_φ log q_φ(z), whose expectation is zero: at the same draws
    the values are identical, and averaged over many draws so are the gradients (of every part,
    the upper encoder's included: its input z₁ is a sample that carries gradient)."""
    vae = tiny_vae(dims, top_net=TOP)

    def gradient(stl: bool) -> tuple[torch.Tensor, torch.Tensor]:
        vae.zero_grad()
        torch.manual_seed(3)
        out = vae(x.repeat(4000, 1, 1, 1), stl=stl)  # 4000 draws per example, one each (k = 1)
        (-out.log_w.mean()).backward()
        grads = torch.cat([p.grad.flatten() for p in vae.parameters() if p.grad is not None])
        return out.log_w.detach(), grads

    (w_plain, g_plain), (w_stl, g_stl) = gradient(False), gradient(True)
    torch.testing.assert_close(w_stl, w_plain)
    assert not torch.equal(g_stl, g_plain)  # the score term is gone from each draw
    torch.testing.assert_close(g_stl, g_plain, atol=0.02 * g_plain.abs().max().item(), rtol=0)
    with pytest.raises(ValueError, match="k = 5"):  # STL under the IWAE bound: a biased gradient
        vae(x, k=5, stl=True)


def test_generate_is_deterministic_unless_stochastic():
    vae = tiny_vae(latent_dims=[3, 2], top_net=TOP)
    z = torch.randn(4, 2)
    a, b = vae.generate(z), vae.generate(z)
    assert torch.equal(a, b)
    mean_z1, _ = gaussian_params(vae.decoders[1](z))
    torch.testing.assert_close(a, torch.sigmoid(vae.decoders[0](mean_z1)))  # lower layer at its mean
    torch.manual_seed(0)
    c = vae.generate(z, stochastic=True)
    d = vae.generate(z, stochastic=True)
    assert not torch.equal(c, d)
    torch.manual_seed(0)
    assert torch.equal(vae.generate(z, stochastic=True), c)  # random, but seeded
    assert a.shape == (4, *SHAPE) and float(a.min()) >= 0 and float(a.max()) <= 1
    one = tiny_vae()  # one layer: nothing to draw, stochastic or not
    assert torch.equal(
        one.generate(z[:, :1].expand(4, 3)), one.generate(z[:, :1].expand(4, 3), stochastic=True)
    )


def test_sample_and_prior_sample_follow_the_generator_and_temperature():
    vae = tiny_vae(latent_dims=[3, 2], top_net=TOP)
    z = vae.prior_sample(6, generator=torch.Generator().manual_seed(0))
    assert z.shape == (6, 2)
    cold = vae.prior_sample(6, temperature=0.5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cold, 0.5 * z)
    images = vae.sample(6, generator=torch.Generator().manual_seed(0))
    assert images.shape == (6, *SHAPE) and torch.isfinite(images).all()


# -- conditioning ----------------------------------------------------------------------------------
def test_conditional_encoder_sees_labels_as_extra_channels():
    conv = {"_target_": "vaelab.model.nets.conv.Conv", "channels": [4, 8]}
    torch.manual_seed(0)
    vae = VAE((1, 28, 28), 3, conv, GAUSSIAN, NORMAL, n_conditions=10)
    first = next(m for m in vae.encoders[0].modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1 + 10
    first_linear = next(m for m in vae.decoders[0].modules() if isinstance(m, nn.Linear))
    assert first_linear.in_features == 3 + 10
    mlp = tiny_vae(n_conditions=4)
    assert mlp.encoders[0][1].in_features == (1 + 4) * 4 * 4
    out = vae(torch.rand(2, 1, 28, 28), torch.tensor([3, 7]))
    assert out.log_w.shape == (1, 2)


def test_condition_one_hots_classes_and_passes_attribute_vectors():
    vae = tiny_vae(n_conditions=4)
    torch.testing.assert_close(
        vae.condition(torch.tensor([2, 0, 3]), 3), F.one_hot(torch.tensor([2, 0, 3]), 4).float()
    )
    attributes = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 1]])
    got = vae.condition(attributes, 2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, attributes.float())
    cycled = vae.condition(None, 6)  # no labels: example i gets class i mod n
    torch.testing.assert_close(cycled, F.one_hot(torch.tensor([0, 1, 2, 3, 0, 1]), 4).float())
    assert tiny_vae().condition(torch.tensor([1]), 1) is None  # unconditional: labels are ignored


def test_labels_change_the_decoded_output_and_none_cycles_classes(x):
    vae = tiny_vae(n_conditions=4)
    z = torch.randn(4, 3)
    zeros, ones = (
        vae.generate(z, torch.zeros(4, dtype=torch.long)),
        vae.generate(z, torch.ones(4, dtype=torch.long)),
    )
    assert not torch.allclose(zeros, ones)
    torch.testing.assert_close(vae.generate(z), vae.generate(z, torch.arange(4)))
    torch.testing.assert_close(vae.reconstruct(x), vae.reconstruct(x, torch.arange(5) % 4))
    assert not torch.allclose(vae.reconstruct(x, torch.zeros(5)), vae.reconstruct(x, torch.ones(5)))
    torch.manual_seed(0)
    a = vae(x, torch.zeros(5, dtype=torch.long))
    torch.manual_seed(0)
    b = vae(x, torch.full((5,), 2))
    assert not torch.allclose(a.log_px, b.log_px)  # the label reaches q(z|x, y) and p(x|z, y)
    torch.manual_seed(0)
    samples = vae.sample(8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    by_class = vae.sample(8, torch.arange(8) % 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(samples, by_class)


def test_vamp_prior_on_a_conditional_model_encodes_pseudo_inputs():
    vamp = {"_target_": "vaelab.model.priors.vamp.VampPrior", "components": 3}
    vae = tiny_vae(n_conditions=4, prior=vamp)
    out = vae(torch.rand(2, *SHAPE), torch.tensor([0, 1]))
    assert torch.isfinite(out.log_pz).all() and out.kl is None
    assert vae.sample(3).shape == (3, *SHAPE)


# -- option checks -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [0, -1, [], [3, 0], [2.5], [True], "3", [3, None]])
def test_bad_latent_dims_are_user_errors(dims):
    with pytest.raises(UserError, match="latent_dims="):
        tiny_vae(latent_dims=dims)


def test_two_layers_without_top_net_is_a_user_error():
    with pytest.raises(UserError, match="top_net"):
        tiny_vae(latent_dims=[3, 2])


# -- every part with every other --------------------------------------------------------------------------
def spec(group: str, name: str, **small) -> dict:
    """conf/<group>/<name>.yaml as a plain spec, with ``small`` overriding its sizes."""
    return {**OmegaConf.to_container(OmegaConf.load(CONF / group / f"{name}.yaml")), **small}


NETS = {"mlp": {"hidden": [8]}, "conv": {"channels": [4, 8]}, "resnet": {"channels": [4, 8], "norm": "group"}}
LIKELIHOODS = {"gaussian": {}, "gaussian_pixel": {}, "bernoulli": {}, "logistic_mixture": {"components": 2}}
PRIORS = {"normal": {}, "mixture": {"components": 3}, "vamp": {"components": 3}}
OBJECTIVES = {"elbo": {}, "iwae": {"k": 2}, "free_bits": {}}


# every combination but VampPrior on the batch-norm conv net, which is refused (the next test)
COMBINATIONS = [
    (net, likelihood, prior)
    for net in NETS
    for likelihood in LIKELIHOODS
    for prior in PRIORS
    if not (net == "conv" and prior == "vamp")
]


@pytest.mark.parametrize(("net", "likelihood", "prior"), COMBINATIONS)
def test_every_combination_builds_and_gives_finite_losses(net, likelihood, prior):
    torch.manual_seed(0)
    vae = VAE(
        (1, 28, 28),
        4,
        spec("net", net, **NETS[net]),
        spec("likelihood", likelihood, **LIKELIHOODS[likelihood]),
        spec("prior", prior, **PRIORS[prior]),
    )
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    if likelihood == "bernoulli":
        x = x.round()
    for name, small in OBJECTIVES.items():
        objective = build(spec("objective", name, **small))
        out = objective(vae, x, None, step=0)
        assert out.loss.dim() == 0 and torch.isfinite(out.loss), (name, out.loss)
        for term, value in out.terms.items():
            assert value.shape == (4,) and torch.isfinite(value).all(), (name, term)
        out.loss.backward()
    assert vae.sample(2).shape == (2, 1, 28, 28)
    assert vae.reconstruct(x).shape == (4, 1, 28, 28)
    assert (prior == "normal") == (vae(x).kl is not None)  # closed form only for N(0, I)


@pytest.mark.parametrize(
    "net",
    [
        {"_target_": "vaelab.model.nets.conv.Conv"},
        RESNET_BN := {"_target_": "vaelab.model.nets.resnet.ResNet", "channels": [4, 8], "norm": "batch"},
    ],
)
def test_a_vamp_prior_refuses_a_batch_norm_encoder(net):
    vamp = {"_target_": "vaelab.model.priors.vamp.VampPrior", "components": 3}
    with pytest.raises(UserError, match=r"batch norm .*net=mlp, or net=resnet net.norm=group"):
        VAE((1, 28, 28), 4, net, {"_target_": "vaelab.model.likelihoods.bernoulli.Bernoulli"}, vamp)


def test_the_two_layer_model_composes_with_every_objective(x):
    vae = tiny_vae(latent_dims=[3, 2], top_net=TOP)
    for name, small in OBJECTIVES.items():
        out = build(spec("objective", name, **small))(vae, x)
        assert torch.isfinite(out.loss) and torch.isfinite(out.terms["kl"]).all()


def test_reparameterisation_matches_elbo_module():  # the VAE draws z exactly as elbo.reparameterize
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    torch.manual_seed(0)
    a = elbo.reparameterize(mu, logvar, n_samples=2)
    torch.manual_seed(0)
    assert torch.equal(a, torch.randn(2, 2, 3))


def test_a_part_spec_may_not_contradict_what_the_model_decides():
    """The prior's latent_dim is the model's top layer: a spec saying otherwise is refused at build."""
    prior = {"_target_": "vaelab.model.priors.normal.StandardNormal", "latent_dim": 7}
    with pytest.raises(UserError, match=r"latent_dim=7 \(the model's is 4\).*drop it from the part's spec"):
        VAE(
            (1, 28, 28),
            4,
            {"_target_": "vaelab.model.nets.mlp.MLP"},
            {"_target_": "vaelab.model.likelihoods.bernoulli.Bernoulli"},
            prior,
        )
    prior["latent_dim"] = 4  # repeating it is fine
    assert (
        VAE(
            (1, 28, 28),
            4,
            {"_target_": "vaelab.model.nets.mlp.MLP"},
            {"_target_": "vaelab.model.likelihoods.bernoulli.Bernoulli"},
            prior,
        ).prior.latent_dim
        == 4
    )


def test_two_layer_samples_draw_the_lower_layer_and_a_generator_repeats_them():
    """With one top code repeated, ancestral samples still differ (z1 ~ p(z1|z2)); decoding the
    means gives one image. A generator makes the draws repeatable, as figures need."""
    torch.manual_seed(0)
    vae = tiny_vae(latent_dims=[3, 2], top_net=TOP)
    z = torch.zeros(4, 2)
    means = vae.generate(z)
    assert torch.equal(means[0], means[3])
    drawn = vae.generate(z, stochastic=True, generator=torch.Generator().manual_seed(5))
    again = vae.generate(z, stochastic=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(drawn, again) and not torch.allclose(drawn[0], drawn[3])
