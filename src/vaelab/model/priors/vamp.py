"""VampPrior (Tomczak & Welling 2018): p(z) = 1/K Σ_k q(z | u_k) over K learned pseudo-inputs.

The prior is the encoder's own posterior averaged over images u_k it learns, so it tracks the
aggregate posterior that the optimal prior equals. It needs the encoder: ``log_prob`` and
``sample`` take ``encode`` from the model. The KL has no closed form (Monte Carlo instead).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaelab.errors import UserError
from vaelab.model import elbo
from vaelab.model.priors.base import Encode, Prior
from vaelab.model.priors.mixture import mixture_log_density
from vaelab.model.priors.normal import positive_int


def _image_shape(value: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise UserError(
            f"VampPrior: image_shape={value!r} is not valid; it must be a sequence of positive integers "
            "such as (1, 28, 28) (channels, height, width). The model passes it from the dataset."
        )
    return shape


def _init(init_mean: float, init_std: float) -> tuple[float, float]:
    if not 0.0 < init_mean < 1.0:
        raise UserError(
            f"VampPrior: init_mean={init_mean!r} is not valid; it is the mean pixel value the "
            "pseudo-inputs start at and must lie strictly between 0 and 1 (e.g. 0.5)."
        )
    if not init_std >= 0.0:
        raise UserError(
            f"VampPrior: init_std={init_std!r} is not valid; it is the spread of the pseudo-inputs' "
            "initial pixel values and must be 0 or more (e.g. 0.1)."
        )
    return float(init_mean), float(init_std)


class VampPrior(Prior):
    """K pseudo-inputs, stored unconstrained and squashed by a sigmoid so they are images in [0, 1].

    They start as pixels init_mean + init_std·ε (clipped into (0, 1)).
    """

    def __init__(
        self,
        latent_dim: int,
        image_shape: Sequence[int],
        components: int = 500,
        init_mean: float = 0.5,
        init_std: float = 0.1,
    ):
        super().__init__(positive_int("VampPrior", "latent_dim", latent_dim, "the size of z"))
        k = positive_int("VampPrior", "components", components, "the number of pseudo-inputs K")
        self.image_shape = _image_shape(image_shape)
        mean, std = _init(init_mean, init_std)
        pixels = (mean + std * torch.randn(k, *self.image_shape)).clamp(1e-3, 1 - 1e-3)
        self.raw_pseudo_inputs = nn.Parameter(torch.logit(pixels))

    @property
    def components(self) -> int:
        return self.raw_pseudo_inputs.shape[0]

    def pseudo_inputs(self) -> Tensor:
        """The K pseudo-inputs as images in [0, 1], (K, *image_shape) (e.g. for a figure)."""
        return torch.sigmoid(self.raw_pseudo_inputs)

    def _encode(self, encode: Encode | None, which: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if encode is None:
            raise UserError(
                "VampPrior: log_prob and sample need encode, the model's encoder (images → μ, log σ²), "
                "since the prior is the posterior of its pseudo-inputs; the model or objective using this "
                "prior passed encode=None. Pass the encoder, or choose another prior (conf/prior)."
            )
        u = self.pseudo_inputs()
        return encode(u if which is None else u[which])

    def log_prob(self, z: Tensor, encode: Encode | None = None) -> Tensor:
        mu, logvar = self._encode(encode)  # (K, D) each
        log_weights = torch.full(
            (self.components,), -math.log(self.components), dtype=z.dtype, device=z.device
        )
        return mixture_log_density(z, log_weights, mu, logvar)

    def sample(
        self, n: int, encode: Encode | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        u = self.raw_pseudo_inputs
        device = u.device if generator is None else generator.device
        k = torch.randint(self.components, (n,), generator=generator, device=device).to(u.device)
        mu, logvar = self._encode(encode, k)
        return elbo.reparameterize(mu, logvar, generator=generator)
