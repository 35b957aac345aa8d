"""Likelihood parts: closed forms against torch.distributions, normalisation of the discrete mass,
shapes of the learned σ, the YAML specs and the errors for bad options."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Normal

from vaelab.errors import UserError
from vaelab.model.likelihoods.bernoulli import Bernoulli
from vaelab.model.likelihoods.gaussian import Gaussian
from vaelab.model.likelihoods.logistic import DiscretizedLogistic
from vaelab.model.parts import build

CONF = Path(__file__).resolve().parents[1] / "conf" / "likelihood"
SHAPE = (3, 4, 4)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# -- Bernoulli ----------------------------------------------------------------------------


def test_bernoulli_matches_torch():
    logits = 3 * torch.randn(2, *SHAPE)
    x = torch.bernoulli(torch.full((2, *SHAPE), 0.5))
    lik = Bernoulli()
    expected = TorchBernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(x, logits), expected)
    torch.testing.assert_close(lik.mean(logits), torch.sigmoid(logits))
    assert set(lik.sample(logits).unique().tolist()) <= {0.0, 1.0}
    assert (lik.data, lik.params_per_value, lik.extra_terms()) == ("binary", 1, {})


# -- Gaussian -----------------------------------------------------------------------------

SIGMA_SHAPES = {"none": (), "scalar": (), "channel": (3, 1, 1), "pixel": SHAPE}


@pytest.mark.parametrize("learn", list(SIGMA_SHAPES))
def test_gaussian_matches_torch_normal(learn):
    lik = Gaussian(SHAPE, sigma=0.2, learn=learn)
    assert lik.log_sigma.shape == SIGMA_SHAPES[learn]
    torch.testing.assert_close(lik.log_sigma, torch.full(SIGMA_SHAPES[learn], math.log(0.2)))
    with torch.no_grad():  # distinct σ per entry, so a wrong broadcast would show
        lik.log_sigma.add_(0.3 * torch.randn(SIGMA_SHAPES[learn]))
    params, x = torch.randn(2, *SHAPE), torch.rand(2, *SHAPE)
    expected = Normal(torch.sigmoid(params), lik.log_sigma.exp()).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(x, params), expected)
    assert lik.data == "continuous" and lik.params_per_value == 1


@pytest.mark.parametrize("learn", list(SIGMA_SHAPES))
def test_gaussian_sigma_is_parameter_when_learned_and_buffer_when_fixed(learn):
    lik = Gaussian(SHAPE, sigma=0.5, learn=learn)
    learned = [name for name, _ in lik.named_parameters()]
    assert learned == ([] if learn == "none" else ["log_sigma"])
    assert "log_sigma" in lik.state_dict()  # checkpointed either way
    assert lik.extra_terms() == ({} if learn == "none" else {"sigma": pytest.approx(0.5)})


def test_gaussian_learned_sigma_gets_gradient_and_samples_are_images():
    lik = Gaussian(SHAPE, learn="pixel")
    lik.log_prob(torch.rand(2, *SHAPE), torch.randn(2, *SHAPE)).sum().backward()
    assert lik.log_sigma.grad.shape == SHAPE and torch.isfinite(lik.log_sigma.grad).all()
    s = lik.sample(torch.randn(5, *SHAPE))
    assert s.shape == (5, *SHAPE) and s.min() >= 0 and s.max() <= 1


# -- DiscretizedLogistic ------------------------------------------------------------------


def all_values_log_probs(lik: DiscretizedLogistic, pixel_params: torch.Tensor) -> torch.Tensor:
    """log P(k) for every grid value k and each pixel's params (N, P) → (N, levels)."""
    n, p = pixel_params.shape
    levels = lik.levels
    params = pixel_params.repeat_interleave(levels, 0).view(n * levels, p, 1, 1)
    x = (torch.arange(levels, dtype=torch.float32) / (levels - 1)).repeat(n).view(-1, 1, 1, 1)
    return lik.log_prob(x, params).view(n, levels)


def extreme_params(m: int) -> torch.Tensor:
    """Pixels (N, 3m) with tiny/huge scales, means far outside [−1, 1] or on a bin edge, peaked weights."""
    rows = []
    for mean, log_scale, weight in [
        (0.0, -20.0, 0.0),  # tiniest scale (clamped), centred
        (1.0 / 255, -7.0, 0.0),  # mean exactly on the edge between two bins
        (5.0, -7.0, 0.0),  # far above the top value
        (-30.0, -3.0, 0.0),  # far below the bottom value
        (0.3, 6.0, 0.0),  # huge scale: nearly flat
        (-0.9, -7.0, 60.0),  # one component takes all the weight
    ]:
        w = torch.full((m,), -60.0)
        w[0] = weight
        means = torch.linspace(-1.5, 1.5, m)
        means[0] = mean
        scales = torch.full((m,), -2.0)
        scales[0] = log_scale
        rows.append(torch.cat([w, means, scales]))
    return torch.stack(rows)


@pytest.mark.parametrize("components", [1, 3])
@pytest.mark.parametrize("extreme", [False, True])
def test_logistic_masses_sum_to_one(components, extreme):
    lik = DiscretizedLogistic(components=components)
    pixels = extreme_params(components) if extreme else 2 * torch.randn(6, 3 * components)
    log_p = all_values_log_probs(lik, pixels)
    assert torch.isfinite(log_p).all()
    torch.testing.assert_close(torch.logsumexp(log_p, dim=1).exp(), torch.ones(6), atol=1e-4, rtol=0)


def test_logistic_refuses_a_bit_depth_the_data_do_not_have():
    """The data are 8-bit: bins for another depth would not partition their 256 values (with
    bits=5 the 256 values' probabilities summed to 5.7), so the bits/dim would be no likelihood."""
    with pytest.raises(UserError, match=r"bits=5 is not supported: .*8-bit images.*\(bits=8\)"):
        DiscretizedLogistic(components=2, bits=5)


def direct_log_prob(k: torch.Tensor, params: torch.Tensor, m: int) -> torch.Tensor:
    """Reference in float64: mixture of CDF differences over bin edges, edge bins open, (N,) each."""
    p = params.double()
    log_w = torch.log_softmax(p[:, :m], 1)
    mu, s = p[:, m : 2 * m], p[:, 2 * m :].clamp(min=-7).exp()
    centre = 2 * k.double().unsqueeze(1) / 255 - 1
    hi = torch.where(centre > 0.999, torch.inf, centre + 1 / 255)
    lo = torch.where(centre < -0.999, -torch.inf, centre - 1 / 255)
    mass = torch.sigmoid((hi - mu) / s) - torch.sigmoid((lo - mu) / s)
    return torch.logsumexp(log_w + mass.log(), 1)


def test_logistic_log_prob_matches_float64_cdf_difference():
    m = 2
    params = torch.randn(5, 3 * m)
    params[:, 2 * m :] -= 1.5
    k = torch.tensor([0, 17, 128, 200, 255])
    lik = DiscretizedLogistic(components=m)
    got = lik.log_prob((k / 255.0).view(5, 1, 1, 1), params.view(5, 3 * m, 1, 1))
    torch.testing.assert_close(got.double(), direct_log_prob(k, params, m), atol=1e-4, rtol=1e-5)


def test_logistic_channels_use_their_own_rows_and_log_prob_sums_values():
    m, p = 2, 6
    lik = DiscretizedLogistic(components=m)
    params = torch.randn(2, 2 * p, 3, 3)
    x = torch.randint(0, 256, (2, 2, 3, 3)) / 255.0
    per_channel = [lik.log_prob(x[:, c : c + 1], params[:, c * p : (c + 1) * p]) for c in range(2)]
    torch.testing.assert_close(lik.log_prob(x, params), per_channel[0] + per_channel[1])
    assert lik.params_per_value == p and lik.data == "discrete"


def test_logistic_mean_is_weighted_component_mean_in_unit_range():
    lik = DiscretizedLogistic(components=2)
    # equal weights, means 0 and 0.5 on [-1, 1] -> 0.25 -> 0.625 on [0, 1]; means 3, 5 -> clamped to 1
    params = torch.tensor([[0.0, 0.0, 0.0, 0.5, -2, -2], [0.0, 0.0, 3.0, 5.0, -2, -2]]).view(2, 6, 1, 1)
    torch.testing.assert_close(lik.mean(params).flatten(), torch.tensor([0.625, 1.0]))
    m = lik.mean(10 * torch.randn(4, 3 * 6, 2, 2))
    assert m.shape == (4, 3, 2, 2) and m.min() >= 0 and m.max() <= 1


def test_logistic_samples_lie_on_grid_and_follow_the_mass():
    lik = DiscretizedLogistic(components=2)
    pixel = torch.tensor([0.5, -0.5, -0.6, 0.7, -3.0, -4.0])  # two narrow components
    n = 20000
    s = lik.sample(pixel.view(1, 6, 1, 1).expand(n, 6, 1, 1)).flatten()
    k = s * 255
    torch.testing.assert_close(k, k.round(), atol=1e-4, rtol=0)
    assert s.min() >= 0 and s.max() <= 1
    freq = torch.bincount(k.round().long(), minlength=256).float() / n
    prob = all_values_log_probs(lik, pixel.view(1, 6)).exp().flatten()
    assert (freq - prob).abs().max() < 0.02  # several σ of a binomial with n = 20000


def test_logistic_gradients_finite_for_extreme_params():
    lik = DiscretizedLogistic(components=3)
    pixels = extreme_params(3).requires_grad_()
    x = torch.tensor([0, 1, 255, 0, 128, 254]) / 255.0
    lik.log_prob(x.view(6, 1, 1, 1), pixels.view(6, 9, 1, 1)).sum().backward()
    assert torch.isfinite(pixels.grad).all()


def test_logistic_low_precision_params_score_in_float32():
    lik = DiscretizedLogistic(components=1)
    out = lik.log_prob(torch.rand(2, 3, 2, 2), torch.randn(2, 9, 2, 2, dtype=torch.bfloat16))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# -- options and specs --------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, named",
    [
        (lambda: Gaussian(SHAPE, sigma=0), "sigma=0"),
        (lambda: Gaussian(SHAPE, sigma=-0.1), "sigma=-0.1"),
        (lambda: Gaussian(SHAPE, learn="x"), "learn='x'"),
        (lambda: Gaussian(None, learn="pixel"), "image_shape"),
        (lambda: DiscretizedLogistic(components=0), "components=0"),
        (lambda: DiscretizedLogistic(components=2.5), "components=2.5"),
        (lambda: DiscretizedLogistic(bits=0), "bits=0"),
    ],
)
def test_bad_options_raise_user_error_naming_the_value(make, named):
    with pytest.raises(UserError, match=named.replace("(", r"\(")):
        make()


def test_bad_option_through_build_stays_user_error():
    spec = {"_target_": "vaelab.model.likelihoods.gaussian.Gaussian", "learn": "sometimes"}
    with pytest.raises(UserError, match="learn='sometimes' is not one of none, scalar, channel, pixel"):
        build(spec, image_shape=(3, 8, 8))


EXPECTED = {
    "bernoulli": (Bernoulli, 1),
    "gaussian": (Gaussian, 1),
    "gaussian_learned": (Gaussian, 1),
    "gaussian_channel": (Gaussian, 1),
    "gaussian_pixel": (Gaussian, 1),
    "logistic": (DiscretizedLogistic, 3),
    "logistic_mixture": (DiscretizedLogistic, 30),
}


def test_every_yaml_is_listed():
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_yaml_builds_and_scores(name):
    spec = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    lik = build(spec, image_shape=(3, 8, 8))
    cls, p = EXPECTED[name]
    assert type(lik) is cls and lik.params_per_value == p
    out = lik.log_prob(torch.rand(2, 3, 8, 8).round(), torch.randn(2, 3 * p, 8, 8))
    assert out.shape == (2,) and torch.isfinite(out).all()
    if cls is Gaussian:
        assert lik.learn == {"gaussian": "none", "gaussian_learned": "scalar"}.get(
            name, name.removeprefix("gaussian_")
        )
