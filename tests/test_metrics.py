"""The evaluation numbers: the IWAE estimator against an exact marginal likelihood, the
bits/dim formulas, dequantisation, active units and the FID plumbing."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal
from torchmetrics.image.fid import FrechetInceptionDistance

from vaelab.model import elbo
from vaelab.metrics import (
    FID_HOWTO,
    DataModel,
    active_units,
    batch_terms,
    bits_per_dim,
    dequantize,
    fid_scores,
    importance_samples,
    inception_fid,
    likelihood_metrics,
)
from vaelab.vae import VAE


class _IdentityGaussian(nn.Module):
    def __init__(self, log_sigma: float):
        super().__init__()
        self.log_sigma = log_sigma

    def log_prob(self, x, mean):
        return elbo.gaussian_log_prob(x, mean, self.log_sigma)


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
        self.likelihood = _IdentityGaussian(math.log(s))
        self.dummy = nn.Parameter(torch.zeros(1))  # so next(parameters()) has a device

    def encode(self, x):
        var = 1.0 / (1.0 + (self.W**2).sum(0) / self.s**2)
        mu = var * ((x - self.b) @ self.W) / self.s**2
        return mu + self.shift, (var * self.var_scale).log().expand_as(mu)

    def decode(self, z):
        return z @ self.W.T + self.b

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(len(self.b))
        return MultivariateNormal(self.b, cov).log_prob(x)


def _iwae(vae, x, k, max_decodes=10_000):
    with torch.no_grad():
        return batch_terms(vae, x, k, max_decodes)["iwae"]


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
    seen = []
    decode = vae.decode
    vae.decode = lambda z: seen.append(len(z)) or decode(z)
    log_px, log_w = importance_samples(vae, x, *vae.encode(x), k=7, max_decodes=20)
    assert log_w.shape == log_px.shape == (7, 8) and log_w.dtype == torch.float64
    assert seen == [16, 16, 16, 8]  # 2 samples × 8 images per chunk, then the remainder


def test_elbo_terms_and_iwae_on_a_small_vae():
    torch.manual_seed(0)
    vae = VAE((1, 4, 4), latent_dim=2, hidden_dims=(8,)).eval()
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    data = DataModel.for_likelihood("gaussian", images)
    done = []
    m, mu = likelihood_metrics(vae, images, data, k=50, batch_size=4, max_decodes=30, progress=done.append)
    assert done == [4, 4, 2]  # progress counts images, batch by batch
    assert mu.shape == (10, 2) and m["n_examples"] == 10 and m["latent_dim"] == 2
    assert m["neg_elbo"] == pytest.approx(m["kl"] - m["recon"])
    assert m["nll_iwae"] <= m["neg_elbo"]
    assert m["bits_per_dim"] == pytest.approx(m["nll_iwae"] / (16 * math.log(2)) + 8)


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
    gauss = DataModel.for_likelihood("gaussian", grey)
    bern = DataModel.for_likelihood("bernoulli", binary)
    bad = DataModel.for_likelihood("bernoulli", grey)
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

    def reconstruct(self, x):
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
