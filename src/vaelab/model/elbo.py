"""The ELBO of a Gaussian-latent VAE, term by term (derivation: docs/elbo.md).

Every function returns one value **per example, in nats**: sums run over pixels or
latent dimensions, never over the batch, so callers choose the batch reduction
(mean for training, log-sum-exp for importance weighting). Nothing here knows about
networks: inputs are tensors of parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def _sum_except_batch(t: Tensor) -> Tensor:
    return t.flatten(start_dim=1).sum(dim=1)


def gaussian_noise(shape, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """ε ~ N(0, I) of ``shape`` with ``like``'s dtype and device.

    With a generator the draw happens on the generator's device (a CPU generator cannot feed a
    CUDA draw) and is moved afterwards, so seeded samples repeat on any device.
    """
    device = like.device if generator is None else generator.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def reparameterize(
    mu: Tensor, logvar: Tensor, n_samples: int | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """z = μ + σ·ε with ε ~ N(0, I): a sample of q(z|x) that gradients flow through.

    With ``n_samples`` the result gets a leading sample dimension (k, B, D).
    """
    std = torch.exp(0.5 * logvar)
    shape = mu.shape if n_samples is None else (n_samples, *mu.shape)
    return mu + std * gaussian_noise(shape, mu, generator)


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_j (μ_j² + σ_j² − 1 − ln σ_j²), closed form."""
    return 0.5 * _sum_except_batch(mu.pow(2) + logvar.exp() - 1.0 - logvar)


def gaussian_log_prob(x: Tensor, mean: Tensor, log_sigma: Tensor | float) -> Tensor:
    """log N(x; mean, σ² I) summed over pixels: −½ Σ ((x−m)²/σ² + ln 2π + 2 ln σ).

    With σ fixed this is −‖x − m‖² / (2σ²) plus a constant: the scaled MSE of the
    derivation. ``log_sigma`` may be a float, a scalar tensor (the learned,
    "calibrated" decoder) or a tensor broadcastable to ``x``.
    """
    log_sigma = torch.as_tensor(log_sigma, dtype=mean.dtype, device=mean.device)
    sq = (x - mean).pow(2) * torch.exp(-2.0 * log_sigma)
    return -0.5 * _sum_except_batch(sq + LOG_2PI + 2.0 * log_sigma.expand_as(mean))


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(logits)) summed over pixels: minus the summed BCE.

    Works from logits for stability; ``x`` may be binary or in [0, 1] (the
    "continuous Bernoulli without normaliser" that most VAE code trains on).
    """
    return -_sum_except_batch(F.binary_cross_entropy_with_logits(logits, x, reduction="none"))


def gaussian_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; μ, diag σ²) summed over the last dimension (for importance weights)."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(dim=-1)


def standard_normal_log_density(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dimension: the prior p(z)."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(dim=-1)


def elbo(log_px_given_z: Tensor, kl: Tensor, beta: float = 1.0) -> Tensor:
    """β-ELBO per example: E_q[log p(x|z)] − β·KL(q(z|x) ‖ p(z)); β = 1 is the true bound."""
    return log_px_given_z - beta * kl


def iwae_bound(log_weights: Tensor) -> Tensor:
    """log (1/k) Σ_i w_i from log w_i = log p(x, z_i) − log q(z_i|x), shape (k, B) → (B,).

    The log-sum-exp runs in float64: with k in the thousands and weights spanning
    hundreds of nats, float32 loses the digits that separate bounds.
    """
    k = log_weights.shape[0]
    return torch.logsumexp(log_weights.double(), dim=0) - math.log(k)


def kl_standard_normal_dims(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) per latent dimension, ½ (μ² + σ² − 1 − ln σ²), shape kept.

    For per-dimension diagnostics (active units, free bits); :func:`kl_standard_normal` is its sum.
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
