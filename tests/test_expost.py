"""The ex-post prior: EM against known mixtures and closed forms."""

from __future__ import annotations

import pytest
import torch

from vaelab.errors import UserError
from vaelab.expost import GaussianMixture, fit_mixture


def test_one_component_is_the_sample_mean_and_variance():
    torch.manual_seed(0)
    z = torch.randn(500, 3) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([3.0, -1.0, 0.0])
    gm = fit_mixture(z, 1)
    torch.testing.assert_close(gm.means[0], z.double().mean(0))
    centred = z.double() - z.double().mean(0)
    covariance = centred.T @ centred / len(z) + 1e-4 * torch.eye(3, dtype=torch.float64)  # + MIN_VAR
    torch.testing.assert_close(gm.covariances[0], covariance)
    assert gm.weights.tolist() == [1.0]


TRUE_COVARIANCES = torch.tensor([[[1.0, 0.6], [0.6, 0.5]], [[0.5, -0.3], [-0.3, 2.0]]], dtype=torch.float64)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_em_recovers_a_two_component_mixture_and_its_log_density_matches_torch(covariance):
    g = torch.Generator().manual_seed(1)
    truth = GaussianMixture(
        torch.tensor([0.3, 0.7], dtype=torch.float64),
        torch.tensor([[-4.0, 0.0], [4.0, 1.0]], dtype=torch.float64),
        torch.linalg.cholesky(TRUE_COVARIANCES),
    )
    z = truth.sample(20000, generator=g)
    gm = fit_mixture(z, 2, seed=0, covariance=covariance)
    order = gm.means[:, 0].argsort()
    torch.testing.assert_close(gm.weights[order], truth.weights, atol=0.02, rtol=0)
    torch.testing.assert_close(gm.means[order], truth.means, atol=0.06, rtol=0)
    expected = (
        TRUE_COVARIANCES
        if covariance == "full"
        else torch.diag_embed(TRUE_COVARIANCES.diagonal(dim1=1, dim2=2))
    )
    torch.testing.assert_close(gm.covariances[order], expected, atol=0.08, rtol=0)
    D = torch.distributions
    reference = D.MixtureSameFamily(
        D.Categorical(gm.weights), D.MultivariateNormal(gm.means, scale_tril=gm.scale_trils)
    )
    probe = torch.randn(50, 2, dtype=torch.float64) * 3
    torch.testing.assert_close(gm.log_prob(probe), reference.log_prob(probe))


def test_full_covariances_fit_correlated_codes_better_than_diagonal_ones():
    truth = GaussianMixture(
        torch.tensor([0.5, 0.5], dtype=torch.float64),
        torch.tensor([[-4.0, 0.0], [4.0, 1.0]], dtype=torch.float64),
        torch.linalg.cholesky(TRUE_COVARIANCES),
    )
    z = truth.sample(5000, generator=torch.Generator().manual_seed(2))
    full, diag = fit_mixture(z, 2, covariance="full"), fit_mixture(z, 2, covariance="diag")
    assert full.log_prob(z).mean() > diag.log_prob(z).mean() + 0.2  # the 0.6 correlation: 0.22 nats


def test_an_unknown_covariance_kind_is_a_clear_error():
    with pytest.raises(UserError, match="eval.expost_covariance='spherical' is not valid.*full, diag"):
        fit_mixture(torch.randn(10, 2), 2, covariance="spherical")


def test_the_fit_and_its_samples_are_seeded():
    z = torch.randn(300, 4)
    a, b = fit_mixture(z, 5, seed=3), fit_mixture(z, 5, seed=3)
    assert torch.equal(a.means, b.means)
    s1 = a.sample(10, torch.Generator().manual_seed(0))
    s2 = b.sample(10, torch.Generator().manual_seed(0))
    assert torch.equal(s1, s2) and s1.shape == (10, 4) and s1.dtype == torch.float32


@pytest.mark.parametrize("k", [3, 50])
def test_more_components_than_points_or_a_tight_cluster_stay_finite(k):
    z = torch.cat([torch.zeros(5, 2), torch.ones(5, 2)])  # two exact points, zero variance
    gm = fit_mixture(z, k)
    assert len(gm.weights) == min(k, 10)
    variances = gm.covariances.diagonal(dim1=1, dim2=2)
    assert torch.isfinite(gm.log_prob(z)).all() and (variances >= 1e-4).all()


def test_full_covariances_cover_the_active_dims_and_the_inactive_ones_get_variances_only():
    truth = GaussianMixture(
        torch.tensor([0.5, 0.5], dtype=torch.float64),
        torch.tensor([[-4.0, 0.0], [4.0, 1.0]], dtype=torch.float64),
        torch.linalg.cholesky(TRUE_COVARIANCES),
    )
    g = torch.Generator().manual_seed(5)
    active = truth.sample(4000, generator=g).double()
    quiet = 0.01 * torch.randn(4000, 3, generator=g, dtype=torch.float64)  # variance 1e-4: inactive
    z = torch.cat([active[:, :1], quiet[:, :2], active[:, 1:], quiet[:, 2:]], dim=1)  # dims 0, 3 active
    gm = fit_mixture(z, 2, seed=0)
    alone = fit_mixture(active, 2, seed=0)
    keep = torch.tensor([0, 3])
    torch.testing.assert_close(gm.means[:, keep], alone.means)
    torch.testing.assert_close(gm.covariances[:, keep[:, None], keep], alone.covariances)
    off_block = gm.covariances.clone()
    off_block[:, keep[:, None], keep] = 0
    assert torch.count_nonzero(off_block - torch.diag_embed(off_block.diagonal(dim1=1, dim2=2))) == 0
    quiet_vars = gm.covariances.diagonal(dim1=1, dim2=2)[:, [1, 2, 4]]
    torch.testing.assert_close(quiet_vars, torch.full_like(quiet_vars, 2e-4), atol=3e-5, rtol=0)
    assert torch.isfinite(gm.log_prob(z)).all() and gm.sample(5).shape == (5, 5)
