"""Discretized logistic mixture p(x|z) (PixelCNN++ / NVAE): an exact probability mass on 8-bit data.

Each value x = k/(2^bits − 1) owns the bin of width 1/(2^bits − 1) around it, the two edge bins
stretching to ±∞, so the masses of all values sum to one and log p(x|z) is a true discrete
log-likelihood: bits/dim needs no dequantisation offset. Channels are independent given z (no
PixelCNN++ coupling between R, G and B), so every value has its own mixture.

The parameters live on PixelCNN++'s [−1, 1] scale (x' = 2x − 1), so its conventions carry over:
means are unconstrained (0 is mid-grey) and log scales are clamped from below at −7.
"""

from __future__ import annotations

from numbers import Integral

import torch
import torch.nn.functional as F
from torch import Tensor

from vaelab.errors import UserError
from vaelab.model.likelihoods.base import Likelihood

LOG_SCALE_MIN = -7.0
MAX_BITS = 16


def _check_int(name: str, value: object, low: int, high: int, meaning: str) -> int:
    ok = isinstance(value, Integral) and not isinstance(value, bool) and low <= value <= high
    if not ok:
        raise UserError(
            f"DiscretizedLogistic: {name}={value!r} is not valid; it must be an integer from {low} to "
            f"{high}, {meaning}."
        )
    return int(value)


def log_bin_mass(k: Tensor, levels: int, means: Tensor, log_scales: Tensor) -> Tensor:
    """log P(bin k) of Logistic(means, exp(log_scales)) on [−1, 1] with ``levels`` bins.

    Uses the exact identity σ(a) − σ(b) = σ(a)·σ(−b)·(1 − e^{−(a−b)}), every factor in log space
    (log-sigmoid, log(−expm1)), so no bin underflows to zero however far it lies in the tail or
    however small the scale: PixelCNN++'s mid-bin density fallback is not needed.
    """
    half = 1.0 / (levels - 1)
    centred = (2.0 * half) * k - 1.0 - means
    inv_scale = torch.exp(-log_scales)
    upper = inv_scale * (centred + half)
    lower = inv_scale * (centred - half)
    width = (2.0 * half * inv_scale).clamp(min=1e-30)  # a − b, computed without cancellation
    interior = F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(-width))
    bottom = F.logsigmoid(upper)  # P(x' < edge): the first bin reaches −∞
    top = F.logsigmoid(-lower)  # P(x' > edge): the last bin reaches +∞
    return torch.where(k == 0, bottom, torch.where(k == levels - 1, top, interior))


class DiscretizedLogistic(Likelihood):
    """A mixture of ``components`` discretized logistics per value; ``components=1`` is a plain one.

    Params per value P = 3·components, laid out per channel as [mixture logits | means | log scales].
    """

    data = "discrete"

    def __init__(self, components: int = 10, bits: int = 8) -> None:
        super().__init__()
        self.components = _check_int(
            "components", components, 1, 1024, "the number of logistics mixed per value"
        )
        self.bits = _check_int("bits", bits, 1, MAX_BITS, "the bit depth of the data (8 for 256 levels)")
        if self.bits != 8:  # the datasets hold 8-bit values: other bins would not partition them
            raise UserError(
                f"DiscretizedLogistic: bits={bits} is not supported: vaelab's data are 8-bit images, so "
                "the likelihood must put its mass on their 256 values (bits=8)."
            )
        self.levels = 2**self.bits
        self.params_per_value = 3 * self.components

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, C·P, H, W) → log weights, means, log scales, each (B, C, M, H, W), in ≥ float32."""
        if params.dtype in (torch.float16, torch.bfloat16):
            params = params.float()
        b, cp, h, w = params.shape
        m = self.components
        if cp % self.params_per_value:
            raise ValueError(f"params have {cp} channels, not a multiple of {self.params_per_value}")
        p = params.reshape(b, cp // self.params_per_value, 3, m, h, w)
        log_weights = F.log_softmax(p[:, :, 0], dim=2)
        return log_weights, p[:, :, 1], p[:, :, 2].clamp(min=LOG_SCALE_MIN)

    def _bin(self, x: Tensor) -> Tensor:
        """The index k of the grid value nearest to each x in [0, 1]."""
        return torch.round(x * (self.levels - 1)).clamp(0, self.levels - 1)

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        log_weights, means, log_scales = self._split(params)
        k = self._bin(x.to(means.dtype)).unsqueeze(2)
        per_value = torch.logsumexp(log_weights + log_bin_mass(k, self.levels, means, log_scales), dim=2)
        return per_value.flatten(start_dim=1).sum(dim=1)

    def mean(self, params: Tensor) -> Tensor:
        log_weights, means, _ = self._split(params)
        centre = (log_weights.exp() * means).sum(dim=2)
        return ((centre + 1.0) / 2.0).clamp(0.0, 1.0)

    def sample(self, params: Tensor) -> Tensor:
        """Pick a component (Gumbel-max), draw its logistic, round to the nearest grid value."""
        log_weights, means, log_scales = self._split(params)
        tiny = torch.finfo(means.dtype).tiny
        gumbel = -torch.log(-torch.log(torch.rand_like(log_weights).clamp(tiny, 1.0 - 1e-7)))
        pick = (log_weights + gumbel).argmax(dim=2, keepdim=True)
        mu = means.gather(2, pick).squeeze(2)
        scale = log_scales.gather(2, pick).squeeze(2).exp()
        u = torch.rand_like(mu).clamp(1e-7, 1.0 - 1e-7)
        x = (mu + scale * (torch.log(u) - torch.log1p(-u)) + 1.0) / 2.0
        return self._bin(x) / (self.levels - 1)
