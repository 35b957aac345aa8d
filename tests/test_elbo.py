"""The ELBO math against closed forms, torch.distributions and Monte-Carlo estimates."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from vaelab.model import elbo


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def test_kl_matches_torch_distributions(gen):
    mu, logvar = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    q = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    p = Independent(Normal(torch.zeros(7), torch.ones(7)), 1)
    torch.testing.assert_close(elbo.kl_standard_normal(mu, logvar), kl_divergence(q, p))


def test_kl_is_zero_exactly_at_the_prior():
    assert torch.equal(elbo.kl_standard_normal(torch.zeros(3, 4), torch.zeros(3, 4)), torch.zeros(3))


def test_kl_matches_monte_carlo_estimate(gen):
    mu, logvar = torch.tensor([[0.8, -0.3]]), torch.tensor([[-0.5, 0.4]])
    torch.manual_seed(0)
    z = elbo.reparameterize(mu, logvar, n_samples=200_000)  # (k, 1, 2)
    mc = (elbo.gaussian_log_density(z, mu, logvar) - elbo.standard_normal_log_density(z)).mean()
    assert mc.item() == pytest.approx(elbo.kl_standard_normal(mu, logvar).item(), abs=0.01)


def test_reparameterized_sample_has_posterior_moments_and_gradients():
    mu = torch.tensor([[1.5, -2.0]], requires_grad=True)
    logvar = torch.tensor([[math.log(0.25), math.log(4.0)]], requires_grad=True)
    torch.manual_seed(0)
    z = elbo.reparameterize(mu, logvar, n_samples=100_000)
    torch.testing.assert_close(z.mean(0), mu.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([[0.5, 2.0]]), atol=0.02, rtol=0)
    z.sum().backward()
    assert mu.grad is not None and logvar.grad is not None


def test_gaussian_log_prob_matches_torch_and_sums_over_pixels(gen):
    x = torch.rand(4, 1, 3, 3, generator=gen)
    mean = torch.rand(4, 1, 3, 3, generator=gen)
    expected = Normal(mean, 0.3).log_prob(x).sum(dim=(1, 2, 3))
    got = elbo.gaussian_log_prob(x, mean, math.log(0.3))
    assert got.shape == (4,)
    torch.testing.assert_close(got, expected)


def test_fixed_sigma_gaussian_is_scaled_mse_plus_constant(gen):
    x, mean = torch.rand(2, 10, generator=gen), torch.rand(2, 10, generator=gen)
    sigma = 0.1
    sse = ((x - mean) ** 2).sum(1)
    const = -0.5 * 10 * math.log(2 * math.pi * sigma**2)
    torch.testing.assert_close(
        elbo.gaussian_log_prob(x, mean, math.log(sigma)), -sse / (2 * sigma**2) + const
    )


def test_learned_scalar_sigma_tensor_works_and_gets_gradient(gen):
    x, mean = torch.rand(3, 5, generator=gen), torch.rand(3, 5, generator=gen)
    log_sigma = torch.tensor(-1.0, requires_grad=True)
    out = elbo.gaussian_log_prob(x, mean, log_sigma)
    torch.testing.assert_close(out, Normal(mean, math.exp(-1.0)).log_prob(x).sum(1))
    out.sum().backward()
    assert log_sigma.grad is not None and log_sigma.grad.item() != 0


def test_bernoulli_log_prob_matches_torch(gen):
    logits = torch.randn(4, 1, 5, 5, generator=gen) * 3
    x = (torch.rand(4, 1, 5, 5, generator=gen) > 0.5).float()
    expected = Bernoulli(logits=logits).log_prob(x).sum(dim=(1, 2, 3))
    torch.testing.assert_close(elbo.bernoulli_log_prob(x, logits), expected)


def test_elbo_combines_terms_with_beta():
    recon, kl = torch.tensor([-100.0, -50.0]), torch.tensor([10.0, 4.0])
    torch.testing.assert_close(elbo.elbo(recon, kl), torch.tensor([-110.0, -54.0]))
    torch.testing.assert_close(elbo.elbo(recon, kl, beta=0.5), torch.tensor([-105.0, -52.0]))


def test_elbo_lower_bounds_exact_log_marginal_of_linear_gaussian_model():
    # p(z)=N(0,1), p(x|z)=N(z, s²) → p(x)=N(0, 1+s²); any q gives ELBO ≤ log p(x),
    # with equality at the true posterior N(x/(1+s²), s²/(1+s²)).
    s, x = 0.5, torch.tensor([[1.3]])
    log_px = Normal(0.0, math.sqrt(1 + s**2)).log_prob(x).sum()
    post_mu, post_var = x / (1 + s**2), torch.tensor([[s**2 / (1 + s**2)]])
    torch.manual_seed(0)

    def mc_elbo(mu, var):
        z = elbo.reparameterize(mu, var.log(), n_samples=100_000)  # (k,1,1)
        recon = elbo.gaussian_log_prob(x.expand(z.shape[0], 1), z[:, 0, :], math.log(s)).mean()
        return recon - elbo.kl_standard_normal(mu, var.log()).sum()

    assert mc_elbo(post_mu, post_var).item() == pytest.approx(log_px.item(), abs=0.01)
    assert mc_elbo(post_mu + 0.5, post_var).item() < log_px.item() - 0.1


def test_iwae_bound_is_log_mean_exp_in_float64():
    log_w = torch.tensor([[-1000.0], [-1001.0], [-1002.0]])
    expected = -1000.0 + math.log((1 + math.exp(-1) + math.exp(-2)) / 3)
    out = elbo.iwae_bound(log_w)
    assert out.dtype == torch.float64
    assert out.item() == pytest.approx(expected, abs=1e-9)
