"""A learnable mixture of K diagonal Gaussians, p(z) = Σ_k π_k N(z; m_k, diag s_k²).

A multimodal prior lets the aggregate posterior form clusters instead of being pulled into one
blob; the KL has no closed form, so the objective estimates it by Monte Carlo.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vaelab.model import elbo
from vaelab.model.priors.base import Encode, Prior
from vaelab.model.priors.normal import positive_int


def mixture_log_density(z: Tensor, log_weights: Tensor, means: Tensor, logvars: Tensor) -> Tensor:
    """log Σ_k w_k N(z; m_k, diag s_k²) for z (..., D), log w (K,), m and log s² (K, D) → (...).

    The square is expanded, Σ_d (z_d − m_kd)²/s²_kd = z²·(1/s²_k) − 2 z·(m_k/s²_k) + Σ_d m²_kd/s²_kd,
    so two matrix products give every component's density: memory (..., K), never the (..., K, D)
    of broadcasting z against the means (a VampPrior's 500 components × a batch × k samples).
    """
    with torch.autocast(z.device.type, enabled=False):  # the expansion cancels: never in 16 bits
        z, means, logvars = z.float(), means.float(), logvars.float()
        precision = torch.exp(-logvars)  # (K, D)
        quadratic = z.square() @ precision.T - 2.0 * (z @ (means * precision).T)  # (..., K)
        constant = (means.square() * precision + logvars).sum(dim=-1) + z.shape[-1] * elbo.LOG_2PI
        per_component = -0.5 * (quadratic + constant)
        return torch.logsumexp(per_component + log_weights.float(), dim=-1)


class GaussianMixture(Prior):
    """K diagonal Gaussians with learned weights (softmax of logits), means and log-variances.

    Means start as standard-normal draws so the components begin apart; log-variances start at
    0 and the weights equal. ``learn=False`` keeps this initial mixture fixed (buffers, not
    parameters).
    """

    def __init__(self, latent_dim: int, components: int = 10, learn: bool = True):
        super().__init__(positive_int("GaussianMixture", "latent_dim", latent_dim, "the size of z"))
        k = positive_int("GaussianMixture", "components", components, "the number of Gaussians K")
        init = {
            "logits": torch.zeros(k),
            "means": torch.randn(k, self.latent_dim),
            "logvars": torch.zeros(k, self.latent_dim),
        }
        for name, value in init.items():
            if learn:
                self.register_parameter(name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    def log_prob(self, z: Tensor, encode: Encode | None = None) -> Tensor:
        return mixture_log_density(z, torch.log_softmax(self.logits, dim=0), self.means, self.logvars)

    def sample(
        self, n: int, encode: Encode | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        probs = torch.softmax(self.logits.detach(), dim=0)
        if generator is not None:
            probs = probs.to(generator.device)
        k = torch.multinomial(probs, n, replacement=True, generator=generator).to(self.means.device)
        return elbo.reparameterize(self.means[k], self.logvars[k], generator=generator)
