"""The standard normal prior N(0, I): the classic VAE's, with a closed-form KL.

Also home to the two small helpers every prior shares: the check of a positive integer option
and generator-aware noise (drawn where the generator lives, then moved to the prior's device,
so a seeded figure shows the same samples on CPU and GPU).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vaelab.errors import UserError
from vaelab.model import elbo
from vaelab.model.priors.base import Encode, Prior


def positive_int(owner: str, name: str, value: object, meaning: str) -> int:
    """``value`` as an int if it is one ≥ 1, else a :class:`UserError` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(
            f"{owner}: {name}={value!r} is not valid; {name} is {meaning} and must be a positive "
            f"integer (e.g. {name}=10). Fix it in the prior's YAML (conf/prior) or on the command line."
        )
    return value


class StandardNormal(Prior):
    """p(z) = N(0, I); KL(q ‖ p) is closed form, so the ELBO needs no Monte Carlo for it."""

    def __init__(self, latent_dim: int):
        super().__init__(positive_int("StandardNormal", "latent_dim", latent_dim, "the size of z"))
        # no parameters: an empty buffer tells us the device and dtype the model moved us to
        self.register_buffer("anchor", torch.zeros(0), persistent=False)

    def log_prob(self, z: Tensor, encode: Encode | None = None) -> Tensor:
        return elbo.standard_normal_log_density(z)

    def sample(
        self, n: int, encode: Encode | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        return elbo.gaussian_noise((n, self.latent_dim), self.anchor, generator)

    def kl_dims(self, mu: Tensor, logvar: Tensor) -> Tensor:
        return elbo.kl_standard_normal_dims(mu, logvar)
