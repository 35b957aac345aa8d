"""Objectives against each other and against their definitions: ELBO (β, warm-up, analytic or
Monte-Carlo KL), IWAE (k = 1 is the ELBO, the bound tightens with k) and free bits."""

from __future__ import annotations

import math

import pytest
import torch

from vaelab.errors import UserError
from vaelab.model.objectives.elbo import ELBO
from vaelab.model.objectives.free_bits import FreeBits
from vaelab.model.objectives.iwae import IWAE
from vaelab.model.parts import build
from vaelab.model.vae import VAE

MLP = {"_target_": "vaelab.model.nets.mlp.MLP", "hidden": [8]}
GAUSSIAN = {"_target_": "vaelab.model.likelihoods.gaussian.Gaussian", "sigma": 0.3}
NORMAL = {"_target_": "vaelab.model.priors.normal.StandardNormal"}
MIXTURE = {"_target_": "vaelab.model.priors.mixture.GaussianMixture", "components": 3}
SHAPE = (1, 4, 4)


def tiny_vae(latent_dims=3, prior=NORMAL, seed=0, **kw) -> VAE:
    torch.manual_seed(seed)
    return VAE(SHAPE, latent_dims, MLP, GAUSSIAN, prior, **kw)


@pytest.fixture
def x():
    return torch.rand(6, *SHAPE, generator=torch.Generator().manual_seed(1))


def seeded(objective, vae, x, seed, step=0):
    torch.manual_seed(seed)
    return objective(vae, x, None, step=step)


def close(a, b, rel=1e-6):
    """Equal up to float32 round-off: ``rel`` of the larger magnitude (1 at least, since a sum of
    terms of size ~1 can cancel to near 0 and keep their round-off)."""
    a, b = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
    scale = max(float(a.abs().max()), float(b.abs().max()), 1.0)
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * scale)


# -- IWAE and the ELBO ------------------------------------------------------------------------------
@pytest.mark.parametrize("prior", [NORMAL, MIXTURE], ids=["normal", "mixture"])
def test_iwae_with_one_sample_is_the_monte_carlo_elbo(x, prior):
    vae = tiny_vae(prior=prior)
    for seed in range(3):
        iwae = seeded(IWAE(k=1), vae, x, seed)
        mc = seeded(ELBO(analytic_kl=False), vae, x, seed)  # the same ε, so the same z
        close(iwae.loss, mc.loss)
        assert set(iwae.terms) == {"recon", "kl", "elbo", "iwae"} and set(mc.terms) == {"recon", "kl", "elbo"}
        for name in ("recon", "kl", "elbo"):
            close(iwae.terms[name], mc.terms[name])
        close(iwae.terms["iwae"], mc.terms["elbo"])  # log mean exp of one weight is the weight


def test_the_elbo_sticks_the_landing_only_when_asked(x):
    """stl=true: the same loss and terms at the same draws, and a gradient without the score term,
    which for the encoder's σ is nonzero at any single draw."""
    vae = tiny_vae(prior=MIXTURE)

    def run(objective):
        vae.zero_grad()
        terms = seeded(objective, vae, x, 0)
        terms.loss.backward()
        return terms, torch.cat([p.grad.flatten() for p in vae.encoders.parameters()])

    (plain, g_plain), (stl, g_stl) = run(ELBO()), run(ELBO(stl=True))
    close(plain.loss, stl.loss)
    for name in ("recon", "kl", "elbo"):
        close(plain.terms[name], stl.terms[name])
    assert not torch.allclose(g_plain, g_stl)
    assert ELBO().stl is False and ELBO(stl=True).stl is True


def test_iwae_with_one_sample_matches_the_analytic_elbo_within_monte_carlo_error(x):
    vae = tiny_vae()
    seeds = range(400)
    with torch.no_grad():
        iwae = torch.stack([seeded(IWAE(k=1), vae, x, s).terms["iwae"] for s in seeds])  # (S, B)
        analytic = torch.stack([seeded(ELBO(), vae, x, s).terms["elbo"] for s in seeds])
    diff = iwae.mean(0) - analytic.mean(0)
    error = (iwae.var(0) / len(seeds) + analytic.var(0) / len(seeds)).sqrt()
    assert (diff.abs() < 4 * error).all(), (diff, error)
    # and the analytic KL is the exact expectation of the Monte-Carlo one (no noise in it)
    with torch.no_grad():
        out = vae(x, k=20_000)
    kl_error = (out.log_qz - out.log_pz).std(0) / math.sqrt(20_000)
    assert ((out.kl_mc - out.kl).abs() < 4 * kl_error).all()


def test_iwae_bound_is_above_the_elbo_and_grows_with_k(x):
    # a sharp decoder (σ = 0.1) makes the weights spread, so the bounds of different k lie far apart
    torch.manual_seed(0)
    sharp = {**GAUSSIAN, "sigma": 0.1}
    vae = VAE(SHAPE, 3, MLP, sharp, NORMAL)
    seeds = range(100)
    with torch.no_grad():
        elbo = torch.stack([seeded(ELBO(), vae, x, s).terms["elbo"] for s in seeds]).mean(0)
        bounds = {
            k: torch.stack([seeded(IWAE(k=k), vae, x, s).terms["iwae"] for s in seeds]).mean(0)
            for k in (1, 10, 100)
        }
    assert (bounds[10] > elbo).all() and (bounds[100] > elbo).all()
    assert (bounds[1] < bounds[10]).all() and (bounds[10] < bounds[100]).all()
    assert bounds[1].mean() < bounds[10].mean() < bounds[100].mean()
    losses = [seeded(IWAE(k=k), vae, x, 0).loss.item() for k in (1, 100)]
    assert losses[1] < losses[0]  # the loss is the negative bound


def test_iwae_loss_is_minus_the_mean_bound_and_has_gradients(x):
    vae = tiny_vae()
    out = seeded(IWAE(k=4), vae, x, 0)
    close(out.loss, -out.terms["iwae"].mean())
    assert out.terms["iwae"].shape == (x.shape[0],) and out.terms["iwae"].dtype == torch.float32
    out.loss.backward()
    assert all(p.grad is not None for p in vae.encoders.parameters())


# -- β and its warm-up ------------------------------------------------------------------------------
def test_beta_warmup_is_linear_from_zero_to_beta():
    obj = ELBO(beta=2.0, warmup_steps=10)
    assert [obj.beta_at(s) for s in (0, 1, 5, 10, 11, 1000)] == pytest.approx([0.0, 0.2, 1.0, 2.0, 2.0, 2.0])
    assert ELBO(beta=0.5).beta_at(0) == 0.5  # no warm-up: β from the first step


def test_elbo_loss_weighs_kl_by_beta_and_logs_the_true_bound(x):
    vae = tiny_vae()
    warm = seeded(ELBO(beta=2.0, warmup_steps=10), vae, x, 0, step=0)
    recon, kl = warm.terms["recon"], warm.terms["kl"]
    close(warm.loss, -recon.mean())  # β = 0 at step 0: reconstruction only
    assert warm.scalars == {"beta": 0.0}
    half = seeded(ELBO(beta=2.0, warmup_steps=10), vae, x, 0, step=5)
    close(half.loss, -(recon - 1.0 * kl).mean())
    assert half.scalars == {"beta": pytest.approx(1.0)}
    full = seeded(ELBO(beta=2.0), vae, x, 0)
    close(full.loss, -(recon - 2.0 * kl).mean())
    assert full.scalars == {}  # no warm-up, nothing to log
    for out in (warm, half, full):
        close(out.terms["elbo"], recon - kl)  # logged at β = 1 whatever the loss uses


def test_elbo_uses_the_closed_form_kl_where_the_prior_has_one(x):
    vae = tiny_vae()
    torch.manual_seed(0)
    out = vae(x)
    close(seeded(ELBO(), vae, x, 0).terms["kl"], out.kl)
    close(seeded(ELBO(analytic_kl=False), vae, x, 0).terms["kl"], out.kl_mc)
    mixture = tiny_vae(prior=MIXTURE)  # no closed form: Monte Carlo either way
    torch.manual_seed(0)
    expected = mixture(x).kl_mc
    close(seeded(ELBO(), mixture, x, 0).terms["kl"], expected)


# -- free bits --------------------------------------------------------------------------------------
def test_free_bits_floor_above_every_dimension_pays_the_floor(x):
    vae = tiny_vae(latent_dims=3)
    torch.manual_seed(0)
    kl_dims = vae(x).kl_dims.mean(0).detach()
    floor = float(kl_dims.max()) + 1.0
    out = seeded(FreeBits(floor=floor), vae, x, 0)
    close(out.loss, -out.terms["recon"].mean() + 3 * floor)
    close(out.terms["elbo"], out.terms["recon"] - out.terms["kl"])  # the true terms are logged


def test_free_bits_with_floor_zero_is_the_elbo(x):
    vae = tiny_vae()
    free, plain = seeded(FreeBits(floor=0.0), vae, x, 0), seeded(ELBO(), vae, x, 0)
    close(free.loss, plain.loss, rel=1e-5)
    for name in ("recon", "kl", "elbo"):
        close(free.terms[name], plain.terms[name])


def test_free_bits_per_dim_false_clamps_the_total_kl(x):
    vae = tiny_vae(latent_dims=3)
    torch.manual_seed(0)
    kl_dims = vae(x).kl_dims.mean(0).detach()  # (D,) batch means
    total = float(kl_dims.sum())
    floor = float(kl_dims.max()) * 1.01  # above every dimension, below the total
    assert floor < total
    whole = seeded(FreeBits(floor=floor, per_dim=False), vae, x, 0)
    close(whole.loss, -whole.terms["recon"].mean() + total, rel=1e-5)  # the total is above the floor
    per_dim = seeded(FreeBits(floor=floor, per_dim=True), vae, x, 0)
    close(per_dim.loss, -per_dim.terms["recon"].mean() + 3 * floor)
    above = seeded(FreeBits(floor=total + 1.0, per_dim=False), vae, x, 0)
    close(above.loss, -above.terms["recon"].mean() + total + 1.0)


def test_free_bits_without_closed_form_uses_the_monte_carlo_total(x):
    vae = tiny_vae(prior=MIXTURE)
    torch.manual_seed(0)
    kl = vae(x).kl_mc.mean().detach()
    out = seeded(FreeBits(floor=0.0), vae, x, 0)
    close(out.loss, -out.terms["recon"].mean() + kl, rel=1e-5)
    high = seeded(FreeBits(floor=float(kl.abs()) + 10.0), vae, x, 0)
    close(high.loss, -high.terms["recon"].mean() + float(kl.abs()) + 10.0)


def test_free_bits_gives_no_kl_gradient_to_a_dimension_below_the_floor(x):
    vae = tiny_vae(latent_dims=3)
    torch.manual_seed(0)
    kl_dims = vae(x).kl_dims.mean(0).detach()
    order = kl_dims.argsort()
    low, high = int(order[0]), int(order[-1])
    floor = float(kl_dims[low] + kl_dims[order[1]]) / 2  # between the lowest two dimensions
    torch.manual_seed(0)
    out = vae(x)
    mu = out.mu
    mu.retain_grad()
    FreeBits(floor=floor).clamped_kl(out).backward()  # the KL part of the loss alone
    assert torch.all(mu.grad[:, low] == 0)  # below the floor: the KL does not push it
    assert torch.any(mu.grad[:, high] != 0)  # above: it does
    expected = mu.detach()[:, high] / x.shape[0]  # ∂/∂μ of the batch-mean ½μ² per example
    torch.testing.assert_close(mu.grad[:, high], expected)


# -- options ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make,option",
    [
        (lambda: IWAE(k=0), "k=0"),
        (lambda: IWAE(k=2.5), "k=2.5"),
        (lambda: ELBO(beta=-1), "beta=-1"),
        (lambda: ELBO(warmup_steps=1.5), "warmup_steps=1.5"),
        (lambda: ELBO(warmup_steps=-1), "warmup_steps=-1"),
        (lambda: FreeBits(floor=-1), "floor=-1"),
        (lambda: FreeBits(floor="high"), "floor='high'"),
    ],
)
def test_bad_options_are_user_errors_naming_the_option(make, option):
    with pytest.raises(UserError, match=option.replace(".", r"\.")):
        make()


def test_objectives_build_from_their_specs_and_report_bad_options():
    obj = build({"_target_": "vaelab.model.objectives.iwae.IWAE", "k": 3})
    assert isinstance(obj, IWAE) and obj.k == 3
    with pytest.raises(UserError, match="beta=-1"):
        build({"_target_": "vaelab.model.objectives.elbo.ELBO", "beta": -1})
    with pytest.raises(UserError, match="no option samples"):
        build({"_target_": "vaelab.model.objectives.iwae.IWAE", "samples": 3})


def test_validation_scores_the_full_beta_during_warm_up(x):
    """No training step (validation, test): the full β, so val/loss is the bound aimed at and the
    best checkpoint is not picked on a cheaper, warm-up-discounted KL."""
    objective = ELBO(beta=2.0, warmup_steps=100)
    assert objective.beta_at(10) == pytest.approx(0.2) and objective.beta_at(None) == 2.0
    val = seeded(objective, tiny_vae(), x, seed=1, step=None)
    assert val.scalars == {}
    torch.testing.assert_close(val.loss, -(val.terms["recon"] - 2.0 * val.terms["kl"]).mean())
