"""Priors against torch.distributions, closed forms, Monte-Carlo estimates and their YAML specs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal, kl_divergence

from vaelab.errors import UserError
from vaelab.model import elbo
from vaelab.model.parts import build
from vaelab.model.priors.mixture import GaussianMixture
from vaelab.model.priors.normal import StandardNormal
from vaelab.model.priors.vamp import VampPrior

CONF = Path(__file__).resolve().parents[1] / "conf" / "prior"
IMAGE = (1, 6, 6)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def diag_normal(mu, logvar):
    return Independent(Normal(mu, (0.5 * logvar).exp()), 1)


class LinearEncode:
    """A fake encoder: flattened image → (μ, log σ²) through two fixed linear maps."""

    def __init__(self, latent_dim: int, gen: torch.Generator, pixels: int = math.prod(IMAGE)):
        self.w_mu = torch.randn(pixels, latent_dim, generator=gen)
        self.w_logvar = 0.1 * torch.randn(pixels, latent_dim, generator=gen)

    def __call__(self, x):
        flat = x.flatten(start_dim=1)
        return flat @ self.w_mu, flat @ self.w_logvar


# -- StandardNormal --------------------------------------------------------------------------


def test_standard_normal_log_prob_matches_torch_over_leading_dims(gen):
    z = torch.randn(5, 3, 4, generator=gen)
    expected = diag_normal(torch.zeros(4), torch.zeros(4)).log_prob(z)
    out = StandardNormal(4).log_prob(z)
    assert out.shape == (5, 3)
    torch.testing.assert_close(out, expected)


def test_standard_normal_kl_matches_torch_and_sums_its_dims(gen):
    mu, logvar = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    prior = StandardNormal(3)
    torch.testing.assert_close(
        prior.kl(mu, logvar),
        kl_divergence(diag_normal(mu, logvar), diag_normal(torch.zeros(3), torch.zeros(3))),
    )
    dims = prior.kl_dims(mu, logvar)
    assert dims.shape == (6, 3)
    torch.testing.assert_close(dims.sum(-1), prior.kl(mu, logvar))
    torch.testing.assert_close(dims.sum(-1), elbo.kl_standard_normal(mu, logvar))


def test_standard_normal_kl_dims_exact_small_case():
    mu, logvar = torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[0.0, 0.0, math.log(2.0)]])
    expected = torch.tensor([[0.0, 0.5, 0.5 * (2.0 - 1.0 - math.log(2.0))]])
    torch.testing.assert_close(StandardNormal(3).kl_dims(mu, logvar), expected)


def test_standard_normal_kl_matches_monte_carlo_within_three_standard_errors(gen):
    mu, logvar = torch.tensor([[0.7, -1.2, 0.1]]), torch.tensor([[-0.6, 0.5, 0.0]])
    prior = StandardNormal(3)
    z = mu + (0.5 * logvar).exp() * torch.randn(20_000, 1, 3, generator=gen)
    values = (elbo.gaussian_log_density(z, mu, logvar) - prior.log_prob(z)).squeeze(1).double()
    se = values.std() / math.sqrt(values.numel())
    assert abs(values.mean().item() - prior.kl(mu, logvar).item()) < 3 * se.item()


def test_standard_normal_sample_shape_dtype_and_generator():
    prior = StandardNormal(4).double()
    a = prior.sample(7, generator=torch.Generator().manual_seed(3))
    b = prior.sample(7, generator=torch.Generator().manual_seed(3))
    assert a.shape == (7, 4) and a.dtype == torch.float64
    assert torch.equal(a, b)
    assert torch.equal(a, torch.randn(7, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    assert StandardNormal(4).state_dict() == {}  # nothing to save or to break old checkpoints


# -- GaussianMixture -------------------------------------------------------------------------


def set_mixture(prior, logits, means, logvars):
    with torch.no_grad():
        prior.logits.copy_(logits)
        prior.means.copy_(means)
        prior.logvars.copy_(logvars)
    return prior


def test_single_standard_component_equals_standard_normal(gen):
    prior = set_mixture(
        GaussianMixture(4, components=1), torch.zeros(1), torch.zeros(1, 4), torch.zeros(1, 4)
    )
    z = torch.randn(3, 5, 4, generator=gen)
    torch.testing.assert_close(prior.log_prob(z), StandardNormal(4).log_prob(z))
    assert prior.kl(torch.zeros(2, 4), torch.zeros(2, 4)) is None


def test_mixture_log_prob_matches_mixture_same_family(gen):
    k, d = 3, 2
    logits, means, logvars = (
        torch.randn(k, generator=gen),
        torch.randn(k, d, generator=gen),
        torch.randn(k, d, generator=gen),
    )
    prior = set_mixture(GaussianMixture(d, components=k), logits, means, logvars)
    reference = MixtureSameFamily(Categorical(logits=logits), diag_normal(means, logvars))
    z = 2 * torch.randn(4, 5, d, generator=gen)
    out = prior.log_prob(z)
    assert out.shape == (4, 5)
    torch.testing.assert_close(out, reference.log_prob(z))


def test_mixture_samples_have_the_mixture_moments():
    weights, means, variances = (
        torch.tensor([0.25, 0.75]),
        torch.tensor([[-2.0], [1.0]]),
        torch.tensor([[0.25], [1.0]]),
    )
    prior = set_mixture(GaussianMixture(1, components=2), weights.log(), means, variances.log())
    z = prior.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert z.shape == (20_000, 1)
    # mean Σ π m = 0.25; variance Σ π (s² + m²) − mean² = 1.0625 + 1.5 − 0.0625 = 2.5
    assert z.mean().item() == pytest.approx(0.25, abs=0.05)
    assert z.var().item() == pytest.approx(2.5, abs=0.1)
    assert (z < -0.5).float().mean().item() == pytest.approx(0.25 * 0.9987 + 0.75 * 0.0668, abs=0.02)


def test_mixture_gradients_reach_every_parameter(gen):
    prior = GaussianMixture(3, components=4)
    prior.log_prob(torch.randn(6, 3, generator=gen)).sum().backward()
    grads = {name: p.grad for name, p in prior.named_parameters()}
    assert set(grads) == {"logits", "means", "logvars"}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_fixed_mixture_has_no_parameters():
    prior = GaussianMixture(3, components=4, learn=False)
    assert list(prior.parameters()) == []
    assert prior.means.shape == (4, 3) and torch.equal(prior.logvars, torch.zeros(4, 3))


# -- VampPrior -------------------------------------------------------------------------------


def test_vamp_log_prob_is_the_explicit_mixture_of_posteriors(gen):
    prior, encode = VampPrior(3, IMAGE, components=5), LinearEncode(3, gen)
    z = torch.randn(2, 4, 3, generator=gen)
    mus, logvars = encode(prior.pseudo_inputs())
    per_k = torch.stack([diag_normal(mus[k], logvars[k]).log_prob(z) for k in range(5)])  # (K, 2, 4)
    expected = torch.logsumexp(per_k, dim=0) - math.log(5)
    out = prior.log_prob(z, encode)
    assert out.shape == (2, 4)
    torch.testing.assert_close(out, expected.detach())
    assert prior.kl(mus, logvars) is None


def test_vamp_gradients_reach_the_pseudo_inputs(gen):
    prior = VampPrior(3, IMAGE, components=5)
    prior.log_prob(torch.randn(4, 3, generator=gen), LinearEncode(3, gen)).sum().backward()
    assert prior.raw_pseudo_inputs.grad is not None and prior.raw_pseudo_inputs.grad.abs().sum() > 0


def test_vamp_samples_come_from_the_pseudo_input_posteriors(gen):
    prior = VampPrior(2, IMAGE, components=3)

    def encode(x):  # u_k ↦ N(10·(first two pixels of u_k), σ² = 10⁻⁸): each draw sits on a mean
        mu = 10 * x.flatten(1)[:, :2]
        return mu, torch.full_like(mu, math.log(1e-8))

    z = prior.sample(50, encode, generator=torch.Generator().manual_seed(1))
    centres, _ = encode(prior.pseudo_inputs())
    assert z.shape == (50, 2)
    nearest = (z[:, None] - centres).norm(dim=-1).min(dim=1)
    assert nearest.values.max().item() < 1e-3
    assert torch.bincount(nearest.indices, minlength=3).min() >= 8  # k uniform: ~17 of 50 each
    again = prior.sample(50, encode, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z, again)


def test_vamp_without_encode_says_so(gen):
    prior = VampPrior(3, IMAGE, components=2)
    with pytest.raises(UserError, match="VampPrior: log_prob and sample need encode"):
        prior.log_prob(torch.zeros(1, 3))
    with pytest.raises(UserError, match="encode=None"):
        prior.sample(2)


def test_vamp_pseudo_inputs_are_images_in_unit_range():
    prior = VampPrior(3, [1, 6, 6], components=7, init_mean=0.5, init_std=5.0)
    u = prior.pseudo_inputs()
    assert u.shape == (7, *IMAGE)
    assert u.min() >= 0 and u.max() <= 1
    assert prior.image_shape == IMAGE


# -- bad options and YAML specs --------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: StandardNormal(0), "StandardNormal: latent_dim=0"),
        (lambda: GaussianMixture(4, components=0), "GaussianMixture: components=0"),
        (lambda: GaussianMixture(0), "GaussianMixture: latent_dim=0"),
        (lambda: GaussianMixture(4, components=2.5), "components=2.5"),
        (lambda: VampPrior(4, IMAGE, components=0), "VampPrior: components=0"),
        (lambda: VampPrior(0, IMAGE), "VampPrior: latent_dim=0"),
        (lambda: VampPrior(4, (1, 0, 6)), r"image_shape=\(1, 0, 6\)"),
        (lambda: VampPrior(4, IMAGE, init_mean=1.5), "init_mean=1.5"),
        (lambda: VampPrior(4, IMAGE, init_std=-1), "init_std=-1"),
    ],
)
def test_bad_options_raise_user_error_naming_the_value(make, message):
    with pytest.raises(UserError, match=message):
        make()


def load(name):
    return yaml.safe_load((CONF / f"{name}.yaml").read_text())


@pytest.mark.parametrize(
    "name, cls", [("normal", StandardNormal), ("mixture", GaussianMixture), ("vamp", VampPrior)]
)
def test_yaml_builds_with_model_context(name, cls):
    prior = build(load(name), latent_dim=4, image_shape=IMAGE)
    assert type(prior) is cls and prior.latent_dim == 4
    z = torch.zeros(2, 3, 4)
    encode = LinearEncode(4, torch.Generator().manual_seed(0))
    assert prior.log_prob(z, encode).shape == (2, 3)


def test_yaml_defaults_are_the_documented_ones():
    assert build(load("mixture"), latent_dim=4).means.shape == (10, 4)
    assert build(load("vamp"), latent_dim=4, image_shape=IMAGE).pseudo_inputs().shape == (500, *IMAGE)


def test_yaml_option_error_passes_through_build():
    with pytest.raises(UserError, match="GaussianMixture: components=0"):
        build({**load("mixture"), "components": 0}, latent_dim=4)
