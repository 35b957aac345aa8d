"""The ELBO with free bits (Kingma et al. 2016): each KL group pays at least λ nats.

The KL of each group (a latent dimension when the prior gives a closed form per dimension, else
the whole code) is averaged over the batch and replaced by max(λ, ·) in the loss, so the
optimiser gains nothing by pushing a group's KL below λ: fewer collapsed units. The logged
terms are the true ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vaelab.model.objectives.base import Objective, Terms, check_number


class FreeBits(Objective):
    def __init__(self, floor: float = 0.5, per_dim: bool = True):
        self.floor = check_number("FreeBits", "floor", floor)
        self.per_dim = bool(per_dim)

    def clamped_kl(self, out) -> Tensor:
        """Σ_groups max(λ, E_batch KL_group): the KL the loss pays (a scalar)."""
        groups = out.kl_dims if self.per_dim and out.kl_dims is not None else None
        if groups is None:
            groups = (out.kl if out.kl is not None else out.kl_mc).unsqueeze(-1)
        return torch.clamp(groups.mean(dim=0), min=self.floor).sum()

    def __call__(self, vae, x: Tensor, y: Tensor | None = None, step: int = 0) -> Terms:
        out = vae(x, y)
        recon = out.log_px.mean(dim=0)
        kl = out.kl if out.kl is not None else out.kl_mc
        loss = -recon.mean() + self.clamped_kl(out)
        return Terms(loss, {"recon": recon, "kl": kl, "elbo": recon - kl})
