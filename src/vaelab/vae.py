"""The VAE as a plain nn.Module: q(z|x) = N(μ, diag σ²), prior N(0, I), decoder p(x|z).

No Lightning here, so the model can be used, exported or tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vaelab import elbo
from vaelab.likelihoods import build_likelihood
from vaelab.nets import build_nets

# log σ² outside this range means σ < 5e-5 or σ > 150: no useful posterior, only overflow.
LOGVAR_RANGE = (-20.0, 10.0)


@dataclass
class ElboTerms:
    """Per-example terms of one ELBO evaluation, in nats."""

    recon: Tensor  # E_q[log p(x|z)], single-sample estimate
    kl: Tensor  # KL(q(z|x) ‖ p(z)), closed form
    mu: Tensor
    logvar: Tensor
    logits: Tensor

    def elbo(self, beta: float = 1.0) -> Tensor:
        return elbo.elbo(self.recon, self.kl, beta)


class VAE(nn.Module):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int,
        net: str = "mlp",
        likelihood: str = "gaussian",
        sigma: float = 0.1,
        learn_sigma: bool = False,
        hidden_dims: tuple[int, ...] = (400,),
        channels: tuple[int, ...] = (32, 64, 128, 256),
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim
        self.encoder, self.decoder = build_nets(
            net, self.image_shape, latent_dim, tuple(hidden_dims), tuple(channels)
        )
        self.likelihood = build_likelihood(likelihood, sigma, learn_sigma)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Parameters (μ, log σ²) of q(z|x)."""
        mu, logvar = self.encoder(x)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: Tensor) -> Tensor:
        """Logits of p(x|z); ``self.likelihood.mean`` turns them into an image in [0, 1]."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> ElboTerms:
        mu, logvar = self.encode(x)
        logits = self.decode(elbo.reparameterize(mu, logvar))
        return ElboTerms(
            recon=self.likelihood.log_prob(x, logits),
            kl=elbo.kl_standard_normal(mu, logvar),
            mu=mu,
            logvar=logvar,
            logits=logits,
        )

    def prior_sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """z ~ N(0, temperature² I) on the model's device."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device="cpu")
        return (temperature * z).to(device)

    @torch.no_grad()
    def generate(self, z: Tensor) -> Tensor:
        """Mean image E[x|z] in [0, 1] for latent codes ``z``."""
        return self.likelihood.mean(self.decode(z))

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """n images decoded (as means) from prior samples."""
        return self.generate(self.prior_sample(n, temperature))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean of p(x|z = μ(x)): the deterministic reconstruction shown in figures."""
        return self.generate(self.encode(x)[0])
