"""Gaussian p(x|z) with a fixed or learned σ: the scaled-MSE decoder and its calibrated variants.

A fixed σ weighs reconstruction against the KL by hand (loss = MSE/(2σ²) + const); learning σ
lets the data set that weight ("calibrated decoder"), globally, per channel or per pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch
from torch import Tensor, nn

from vaelab.errors import UserError
from vaelab.model import elbo
from vaelab.model.likelihoods.base import Likelihood

LEARN_MODES = ("none", "scalar", "channel", "pixel")


def _check_sigma(sigma: object) -> float:
    ok = isinstance(sigma, Real) and not isinstance(sigma, bool) and math.isfinite(sigma) and sigma > 0
    if not ok:
        raise UserError(
            f"Gaussian: sigma={sigma!r} is not a valid standard deviation; it must be a finite number "
            "> 0, the decoder's noise level on the [0, 1] pixel scale (e.g. 0.1; the initial value "
            "when learn is not none)."
        )
    return float(sigma)


def _check_learn(learn: object) -> str:
    if learn not in LEARN_MODES:
        raise UserError(
            f"Gaussian: learn={learn!r} is not one of {', '.join(LEARN_MODES)}; use none for a fixed "
            "sigma, scalar for one learned sigma, channel for one per image channel, pixel for one "
            "per value."
        )
    return learn


def _sigma_shape(learn: str, image_shape: Sequence[int] | None) -> tuple[int, ...]:
    """Shape of log σ, broadcastable against (B, C, H, W)."""
    if learn in ("none", "scalar"):
        return ()
    valid = (
        image_shape is not None
        and len(image_shape) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in image_shape)
    )
    if not valid:
        raise UserError(
            f"Gaussian: learn={learn!r} needs image_shape as (channels, height, width) of positive "
            f"integers, got {image_shape!r}; the model passes it when building the likelihood."
        )
    c, h, w = image_shape
    return (c, 1, 1) if learn == "channel" else (c, h, w)


class Gaussian(Likelihood):
    """N(x; sigmoid(params), σ²) per value; ``log_sigma`` is a buffer when fixed (so checkpoints
    keep it) and a parameter when learned, shaped () / (C, 1, 1) / (C, H, W) by ``learn``."""

    params_per_value = 1
    data = "continuous"

    def __init__(
        self, image_shape: Sequence[int] | None = None, sigma: float = 0.1, learn: str = "none"
    ) -> None:
        super().__init__()
        sigma = _check_sigma(sigma)
        self.learn = _check_learn(learn)
        shape = _sigma_shape(self.learn, None if image_shape is None else tuple(image_shape))
        log_sigma = torch.full(shape, math.log(sigma))
        if self.learn == "none":
            self.register_buffer("log_sigma", log_sigma)
        else:
            self.log_sigma = nn.Parameter(log_sigma)

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        return elbo.gaussian_log_prob(x, self.mean(params), self.log_sigma)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)

    def sample(self, params: Tensor) -> Tensor:
        """A draw of the Gaussian, clipped to [0, 1] so it is a showable image."""
        noise = self.log_sigma.exp() * torch.randn_like(params)
        return (self.mean(params) + noise).clamp(0.0, 1.0)

    def extra_terms(self) -> dict[str, float]:
        if self.learn == "none":
            return {}
        return {"sigma": float(self.log_sigma.detach().exp().mean())}
