"""What a prior is to the model.

``log_prob`` and ``sample`` take ``encode``, the model's map from a batch of images to the
(μ, log σ²) of q(z|x) for the layer this prior sits on: a prior defined through the encoder
(VampPrior's pseudo-inputs) calls it, every other prior ignores it. ``kl`` returns the closed
form KL(q ‖ p) per example when one exists, else None and the objective uses Monte Carlo.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

Encode = Callable[[Tensor], tuple[Tensor, Tensor]]


class Prior(nn.Module):
    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, z: Tensor, encode: Encode | None = None) -> Tensor:
        """log p(z) summed over the last dimension: (..., D) → (...)."""
        raise NotImplementedError

    def sample(
        self, n: int, encode: Encode | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """n draws, (n, D), on the prior's device."""
        raise NotImplementedError

    def kl_dims(self, mu: Tensor, logvar: Tensor) -> Tensor | None:
        """Closed-form KL(N(μ, diag σ²) ‖ p) per latent dimension, (B, D), or None."""
        return None

    def kl(self, mu: Tensor, logvar: Tensor) -> Tensor | None:
        """Closed-form KL(N(μ, diag σ²) ‖ p) per example, (B,), or None (Monte Carlo instead)."""
        dims = self.kl_dims(mu, logvar)
        return None if dims is None else dims.sum(dim=-1)
