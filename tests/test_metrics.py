"""The evaluation numbers: the IWAE estimator against an exact marginal likelihood (a linear
Gaussian model, and a two-layer VAE integrated on a grid), the bits/dim formulas,
dequantisation, active units and the FID plumbing."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal
from torchmetrics.image.fid import FrechetInceptionDistance

from vaelab.metrics import (
    FID_HOWTO,
    DataModel,
    active_units,
    batch_terms,
    bits_per_dim,
    dequantize,
    fid_scores,
    inception_fid,
    likelihood_metrics,
)
from vaelab.model import elbo
from vaelab.model.vae import VAE, Pass

MLP = "vaelab.model.nets.mlp.MLP"
GAUSSIAN = {"_target_": "vaelab.model.likelihoods.gaussian.Gaussian", "sigma": 0.1}
NORMAL = {"_target_": "vaelab.model.priors.normal.StandardNormal"}


class LinearGaussianVAE(nn.Module):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s² I), so p(x) = N(b, WWᵀ + s² I) exactly.

    W has orthogonal columns, so the true posterior is diagonal: var_j = 1/(1 + d_j²/s²),
    mean_j = var_j·w_jᵀ(x − b)/s². ``shift``/``var_scale`` make q deliberately wrong.
    """

    def __init__(self, x_dim=6, z_dim=3, s=0.5, shift=0.0, var_scale=1.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(x_dim, z_dim, generator=g))
        self.W = q * torch.tensor([2.0, 1.0, 0.5])[:z_dim]
        self.b = torch.randn(x_dim, generator=g)
        self.s, self.shift, self.var_scale = s, shift, var_scale
        self.dummy = nn.Parameter(torch.zeros(1))  # so next(parameters()) has a device
        self.calls = []  # k of each forward pass

    def encode(self, x, y=None):
        var = 1.0 / (1.0 + (self.W**2).sum(0) / self.s**2)
        mu = var * ((x - self.b) @ self.W) / self.s**2
        return mu + self.shift, (var * self.var_scale).log().expand_as(mu)

    def decode(self, z):
        return z @ self.W.T + self.b

    def forward(self, x, y=None, k=1):
        """The model's Pass for k samples of q, as :meth:`vaelab.model.vae.VAE.forward` gives it."""
        self.calls.append(k)
        mu, logvar = self.encode(x)
        z = elbo.reparameterize(mu, logvar, n_samples=k)  # (k, B, D)
        log_px = -0.5 * (((x - self.decode(z)) / self.s) ** 2 + elbo.LOG_2PI + 2 * math.log(self.s)).sum(-1)
        kl = elbo.kl_standard_normal(mu, logvar)
        return Pass(
            log_px=log_px,
            log_pz=elbo.standard_normal_log_density(z),
            log_qz=elbo.gaussian_log_density(z, mu, logvar),
            kl=kl,
            kl_dims=None,
            mu=mu,
            params=self.decode(z[0]),
        )

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(len(self.b))
        return MultivariateNormal(self.b, cov).log_prob(x)


def _iwae(vae, x, k, max_decodes=10_000):
    with torch.no_grad():
        return batch_terms(vae, x, None, k, max_decodes)["iwae"]


def _data(n=64):
    vae = LinearGaussianVAE()
    z = torch.randn(n, 3, generator=torch.Generator().manual_seed(1))
    return vae.decode(z) + 0.5 * torch.randn(n, 6, generator=torch.Generator().manual_seed(2))


def test_iwae_is_exact_when_q_is_the_true_posterior():
    vae, x = LinearGaussianVAE(), _data()
    torch.manual_seed(0)
    for k in (1, 7):  # every weight equals p(x): the estimate is exact for any k
        torch.testing.assert_close(_iwae(vae, x, k), vae.exact_log_px(x).double(), atol=1e-4, rtol=0)


def test_iwae_bound_tightens_with_k_towards_the_exact_log_likelihood():
    vae, x = LinearGaussianVAE(shift=0.2, var_scale=2.0), _data(256)
    exact = vae.exact_log_px(x).double().mean().item()
    torch.manual_seed(0)
    bounds = [_iwae(vae, x, k).mean().item() for k in (1, 10, 1000)]
    assert bounds == sorted(bounds), bounds
    assert exact - bounds[0] > 0.5  # the ELBO with this q is loose ...
    assert abs(exact - bounds[-1]) < 0.03  # ... and k = 1000 closes the gap (to Monte-Carlo noise)


def test_importance_sampling_decodes_in_bounded_chunks():
    vae, x = LinearGaussianVAE(), _data(8)
    terms = batch_terms(vae, x, None, k=7, max_decodes=20)
    assert vae.calls == [2, 2, 2, 1]  # 2 samples × 8 images per chunk, then the remainder
    assert all(terms[key].shape == (8,) and terms[key].dtype == torch.float64 for key in ("recon", "iwae"))
    assert terms["mu"].shape == (8, 3)


def _vae(latent_dims=2, likelihood=GAUSSIAN, prior=NORMAL, top_net=None, shape=(1, 4, 4), hidden=(8,)):
    torch.manual_seed(0)
    net = {"_target_": MLP, "hidden": list(hidden)}
    return VAE(shape, latent_dims, net=net, likelihood=likelihood, prior=prior, top_net=top_net).eval()


def test_elbo_terms_and_iwae_on_a_small_vae():
    vae = _vae()
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    data = DataModel.for_likelihood(vae.likelihood.data, images)
    done = []
    m, mu = likelihood_metrics(
        vae, images, None, data, k=50, batch_size=4, max_decodes=30, progress=done.append
    )
    assert done == [4, 4, 2]  # progress counts images, batch by batch
    assert mu.shape == (10, 2) and m["n_examples"] == 10 and m["latent_dim"] == 2
    assert m["neg_elbo"] == pytest.approx(m["kl"] - m["recon"])
    assert m["nll_iwae"] <= m["neg_elbo"]
    assert m["bits_per_dim"] == pytest.approx(m["nll_iwae"] / (16 * math.log(2)) + 8)


def test_discretized_logistic_reports_bits_per_dim_of_a_probability_mass_without_the_offset():
    logistic = {"_target_": "vaelab.model.likelihoods.logistic.DiscretizedLogistic", "components": 2}
    vae = _vae(likelihood=logistic)
    assert vae.likelihood.data == "discrete"
    images = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    data = DataModel.for_likelihood(vae.likelihood.data, images)
    assert data.discrete and not data.dequantized and "+ 8" not in data.note
    assert torch.equal(data.prepare(images, None), images.float() / 255)  # the 8-bit values as they are
    torch.manual_seed(0)
    m, _ = likelihood_metrics(vae, images, None, data, k=20, batch_size=4, max_decodes=100)
    assert m["bits_per_dim"] == pytest.approx(m["nll_iwae"] / (16 * math.log(2)))  # no + 8
    assert m["bits_per_dim_elbo"] == pytest.approx(m["neg_elbo"] / (16 * math.log(2)))
    assert m["nll_iwae"] <= m["neg_elbo"] and m["nll_iwae"] > 0  # a mass: −log P ≥ 0


# -- a two-layer VAE against log p(x) integrated on a grid ------------------------------------
BINARY_X = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1], [1, 0, 1, 1]], dtype=torch.float32)


def _two_layer_vae():
    """latent_dims=[2, 1]: p(z₂) p(z₁|z₂) p(x|z₁) with Bernoulli pixels on 2×2 images; the
    decoders' last layers are scaled up so that p(x|z₁) varies over z₁ and p(z₁|z₂) over z₂."""
    bernoulli = {"_target_": "vaelab.model.likelihoods.bernoulli.Bernoulli"}
    top = {"_target_": MLP, "hidden": [4], "activation": "tanh"}
    vae = _vae([2, 1], likelihood=bernoulli, top_net=top, shape=(1, 2, 2), hidden=(6,))
    with torch.no_grad():
        vae.decoders[0][-2].weight.mul_(3.0)  # the Linear before Unflatten: sharper p(x|z₁)
        vae.decoders[1][-2].weight.mul_(2.0)
    return vae


def _fit_encoder(vae, x, steps=300):
    """A few hundred Adam steps of the ELBO on the encoders only (the generative model, hence
    log p(x), stays fixed): q gets near enough the posterior for IWAE to converge at k ~ 10⁴."""
    torch.manual_seed(0)
    params = [p for name, p in vae.named_parameters() if name.startswith("encoders")]
    opt = torch.optim.Adam(params, lr=0.01)
    for _ in range(steps):
        loss = -vae(x, k=20).log_w.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return vae.eval()


@torch.no_grad()
def _log_px_on_a_grid(vae, x):
    """log p(x) = log ∫∫ p(z₂) p(z₁|z₂) p(x|z₁) dz₁ dz₂ by the midpoint rule on a fine grid, in
    float64: the marginal m(z₁) = ∫ p(z₂) p(z₁|z₂) dz₂ first, then ∫ p(x|z₁) m(z₁) dz₁."""
    z2 = torch.linspace(-7, 7, 281).unsqueeze(1)  # (G₂, 1)
    axis = torch.linspace(-9, 9, 241)
    z1 = torch.cartesian_prod(axis, axis)  # (G₁, 2)
    dz2, dz1 = float(z2[1] - z2[0]), float(axis[1] - axis[0]) ** 2
    mu, logvar = vae._layer(vae.decoders[1], z2)  # p(z₁|z₂), (G₂, 2) each
    log_p_z1_given_z2 = elbo.gaussian_log_density(z1[:, None].double(), mu.double(), logvar.double())
    log_m = torch.logsumexp(log_p_z1_given_z2 + elbo.standard_normal_log_density(z2.double()), dim=1)
    log_m = log_m + math.log(dz2)  # (G₁,)
    assert abs(float(torch.logsumexp(log_m, 0)) + math.log(dz1)) < 1e-3  # m(z₁) integrates to 1
    params = vae._decode_pixels(z1, None)  # (G₁, 1, 2, 2)
    log_px_given_z1 = torch.stack(
        [vae.likelihood.log_prob(xi.expand(len(z1), *xi.shape), params).double() for xi in x]
    )  # (B, G₁)
    return torch.logsumexp(log_px_given_z1 + log_m, dim=1) + math.log(dz1)


def _expected_iwae(vae, x, k, repeats):
    """E[IWAE_k] per example, as the mean of ``repeats`` independent estimates."""
    bounds = batch_terms(vae, x.repeat(repeats, 1, 1, 1), None, k, 10**6)["iwae"]
    return bounds.view(repeats, len(x)).mean(0)


def test_iwae_of_a_two_layer_vae_converges_to_log_px_integrated_on_a_grid():
    x = BINARY_X.view(4, 1, 2, 2)
    vae = _fit_encoder(_two_layer_vae(), x)
    exact = _log_px_on_a_grid(vae, x)
    torch.manual_seed(0)
    bounds = {k: _expected_iwae(vae, x, k, repeats) for k, repeats in ((1, 4000), (10, 4000), (100, 1000))}
    bounds[20_000] = batch_terms(vae, x, None, 20_000, 10**6)["iwae"]
    assert (exact - bounds[1] > 0.03).all(), (exact, bounds[1])  # q ≠ posterior: the ELBO is loose ...
    torch.testing.assert_close(bounds[20_000], exact, atol=0.03, rtol=0)  # ... and large k closes the gap
    assert (bounds[1] < bounds[10]).all()  # IWAE(k) grows with k: per example where the steps are big,
    means = [float(bounds[k].mean()) for k in (1, 10, 100)]
    assert means == sorted(means), means  # on average over the examples for the small last step
    assert (bounds[100] < exact + 0.02).all()  # and stays below log p(x), up to Monte-Carlo error


def test_batch_terms_of_a_two_layer_vae_give_the_top_layer_means_and_a_monte_carlo_kl():
    vae = _two_layer_vae()
    x = torch.bernoulli(torch.full((5, 1, 2, 2), 0.5), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    terms = batch_terms(vae, x, None, 200, 1000)
    assert terms["recon"].shape == terms["kl"].shape == terms["iwae"].shape == (5,)
    assert terms["mu"].shape == (5, 1)  # the top layer, as active units count it
    torch.testing.assert_close(terms["mu"], vae.encode(x)[0])
    torch.testing.assert_close(terms["elbo"], terms["recon"] - terms["kl"])
    assert (terms["iwae"] >= terms["elbo"] - 0.05).all()  # IWAE ≥ ELBO within MC error


# -- bits/dim ------------------------------------------------------------------------------------
def test_bits_per_dim_of_a_fair_coin_is_one_bit():
    d = 784
    assert bits_per_dim(d * math.log(2), d, dequantized_8bit=False) == pytest.approx(1.0)


def test_bits_per_dim_of_the_uniform_density_on_dequantised_bytes_is_eight_bits():
    # U[0,1]^D has log-density 0, and it puts mass (1/256)^D on each 8-bit image: 8 bits/dim
    assert bits_per_dim(0.0, 3072, dequantized_8bit=True) == pytest.approx(8.0)


def test_dequantised_values_stay_in_their_pixel_bin():
    images = torch.arange(256, dtype=torch.uint8).repeat(40)
    y = dequantize(images, torch.Generator().manual_seed(0))
    assert torch.equal(torch.floor(y * 256).to(torch.uint8), images)
    assert y.min() >= 0 and y.max() < 1 and y.std() > 0


def test_data_model_states_which_formula_applies():
    binary = torch.tensor([0, 255], dtype=torch.uint8)
    grey = torch.tensor([0, 128], dtype=torch.uint8)
    gauss = DataModel.for_likelihood("continuous", grey)
    bern = DataModel.for_likelihood("binary", binary)
    bad = DataModel.for_likelihood("binary", grey)
    assert gauss.dequantized and "+ 8" in gauss.note
    assert bern.discrete and bern.bits_per_dim(10 * math.log(2), 10) == pytest.approx(1.0)
    assert bad.bits_per_dim(1.0, 10) is None and "dataset.binarize=true" in bad.note
    assert torch.equal(bern.prepare(binary, None), torch.tensor([0.0, 1.0]))


def test_active_units_count_dims_whose_posterior_mean_varies():
    g = torch.Generator().manual_seed(0)
    mu = torch.stack(
        [
            torch.randn(500, generator=g),
            0.5 * torch.randn(500, generator=g),
            0.01 * torch.randn(500, generator=g),
        ],
        dim=1,
    )
    n, activity = active_units(mu, threshold=0.01)
    assert n == 2
    assert activity[0] == pytest.approx(1.0, abs=0.15) and activity[2] < 1e-3


# -- FID -----------------------------------------------------------------------------------------
def test_fid_without_weights_is_skipped_with_one_line_on_how_to_enable_it(tmp_path):
    assert inception_fid(None) == (None, FID_HOWTO)
    assert "\n" not in FID_HOWTO and "fid.weights_path" in FID_HOWTO
    metric, note = inception_fid(str(tmp_path / "absent.pth"))
    assert metric is None and "does not exist" in note


class _PerfectAutoencoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def reconstruct(self, x, y=None):
        return x

    def sample(self, n):
        return torch.rand(n, 1, 8, 8)


class _Features(nn.Module):
    """A stand-in for Inception (4 pooled statistics), so the plumbing runs without weights."""

    num_features = 4

    def forward(self, x):
        x = x.float()
        return torch.stack(
            [x.mean((1, 2, 3)), x.std((1, 2, 3)), x[:, :, :4].mean((1, 2, 3)), x.amax((1, 2, 3))], 1
        )


def test_fid_scores_compare_reconstructions_and_samples_with_the_test_images():
    images = (torch.rand(60, 1, 8, 8, generator=torch.Generator().manual_seed(0)) ** 3 * 255).to(torch.uint8)
    metric = FrechetInceptionDistance(feature=_Features(), normalize=True, reset_real_features=False)
    done = []
    scores = fid_scores(
        _PerfectAutoencoder(), images, n=50, batch_size=16, metric=metric, progress=done.append
    )
    assert done == [32, 32, 32, 4, 16, 16, 16, 2]  # test images + reconstructions, then samples: 3n
    assert scores["fid_reconstructions"] == pytest.approx(0.0, abs=1e-3)  # identical images
    assert scores["fid"] > 0.01  # uniform noise is not the test distribution
