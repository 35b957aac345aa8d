"""The VAE as a plain nn.Module, composed from parts, with one or more stochastic layers.

Inference runs bottom-up, q(z₁|x) q(z₂|z₁) … q(z_L|z_{L−1}), each a diagonal Gaussian; the
generative model runs top-down, p(z_L) p(z_{L−1}|z_L) … p(x|z₁), with the prior p(z_L) and the
likelihood p(x|z₁) as configured and Gaussian conditionals in between (the IWAE paper's
two-layer model is ``latent_dims=[100, 50]``). With one layer this is the VAE of the
derivation. An optional condition y (a class or attribute vector) is appended to the image as
constant planes for q(z₁|x, y) and to z₁ for p(x|z₁, y): the conditional VAE.

:meth:`VAE.forward` returns the log-densities of k samples per example; objectives
(``vaelab.model.objectives``) and the importance-weighted evaluation combine them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.errors import UserError
from vaelab.model import elbo
from vaelab.model.parts import build

# log σ² outside this range means σ < 5e-5 or σ > 150: no useful posterior, only overflow.
LOGVAR_RANGE = (-20.0, 10.0)


@dataclass
class Pass:
    """Log-densities of k posterior samples per example, each (k, B), in nats."""

    log_px: Tensor  # log p(x|z₁)
    log_pz: Tensor  # log p(z_L) + Σ log p(z_{l−1}|z_l)
    log_qz: Tensor  # Σ log q(z_l|·)
    kl: Tensor | None  # closed-form KL(q ‖ p) per example (B,), when the model has one
    kl_dims: Tensor | None  # the same per latent dimension (B, D)
    mu: Tensor  # (B, D₁): μ of q(z₁|x), for active units
    params: Tensor  # decoder output of the first sample, (B, C·P, H, W)

    @property
    def log_w(self) -> Tensor:
        """Importance weights log p(x, z) − log q(z|x), (k, B)."""
        return self.log_px + self.log_pz - self.log_qz

    @property
    def kl_mc(self) -> Tensor:
        """Monte-Carlo KL estimate, E_q[log q − log p] over the k samples, (B,)."""
        return (self.log_qz - self.log_pz).mean(dim=0)


def _split(h: Tensor) -> tuple[Tensor, Tensor]:
    mu, logvar = h.chunk(2, dim=-1)
    return mu, logvar.clamp(*LOGVAR_RANGE)


def _cut(stl: bool, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
    """q's parameters, cut from the gradient when ``stl`` (see VAE.forward). For an upper layer
    they depend on the sample below; cutting that path too keeps the gradient unbiased, since
    the score of q(z_l|z_{l−1}) has mean zero for every z_{l−1}."""
    return (mu.detach(), logvar.detach()) if stl else (mu, logvar)


def _check_dims(latent_dims) -> list[int]:
    dims = [latent_dims] if isinstance(latent_dims, int) else list(latent_dims)
    if not dims or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in dims):
        raise UserError(
            f"latent_dims={latent_dims!r}: give one positive integer per stochastic layer, "
            "bottom first (e.g. [32] for one layer, [100, 50] for the IWAE paper's two-layer model)."
        )
    return dims


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _check_prior_encoder(prior: nn.Module, encoder: nn.Module) -> None:
    """A prior defined through the encoder (VampPrior) encodes its pseudo-inputs as a batch of
    their own: batch norm would normalise them by their own statistics in training and by mixed
    running ones in evaluation, so the prior evaluated would not be the one trained."""
    if hasattr(prior, "pseudo_inputs") and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in encoder.modules()
    ):
        raise UserError(
            f"{type(prior).__name__} encodes pseudo-inputs with the encoder, which here uses batch norm "
            "(net=conv, or net=resnet with norm=batch): its training and evaluation priors would differ. "
            "Use net=mlp, or net=resnet net.norm=group."
        )


class VAE(nn.Module):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dims: int | list[int],
        net: Mapping,
        likelihood: Mapping,
        prior: Mapping,
        top_net: Mapping | None = None,
        n_conditions: int = 0,
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.latent_dims = _check_dims(latent_dims)
        self.n_conditions = n_conditions
        c, h, w = self.image_shape
        self.likelihood = build(likelihood, image_shape=self.image_shape)
        pixels = build(net)
        d = self.latent_dims
        p = self.likelihood.params_per_value
        self.encoders = nn.ModuleList([pixels.encoder((c + n_conditions, h, w), 2 * d[0])])
        self.decoders = nn.ModuleList([pixels.decoder(d[0] + n_conditions, (c * p, h, w))])
        if len(d) > 1:
            if top_net is None:
                raise UserError(
                    f"latent_dims={d} has {len(d)} stochastic layers, so the model needs top_net: the "
                    "network between latent layers (e.g. model=hierarchical sets an MLP 100-100 tanh)."
                )
            between = build(top_net)
            for lower, upper in zip(d[:-1], d[1:], strict=True):
                self.encoders.append(between.encoder((lower,), 2 * upper))
                self.decoders.append(between.decoder(upper, (2 * lower,)))
        self.prior = build(prior, latent_dim=d[-1], image_shape=self.image_shape)
        _check_prior_encoder(self.prior, self.encoders[0])

    @property
    def latent_dim(self) -> int:
        """Size of the top layer, where the prior sits and samples start."""
        return self.latent_dims[-1]

    # -- conditioning --------------------------------------------------------------------
    def condition(self, y: Tensor | None, batch: int) -> Tensor | None:
        """y as a float (B, n) vector (class indices one-hot), or None for an unconditional VAE.

        A conditional VAE asked for images without labels (prior samples in figures and sample
        quality) cycles through the classes: example i gets class i mod n.
        """
        if not self.n_conditions:
            return None
        if y is None:
            y = torch.arange(batch, device=next(self.parameters()).device) % self.n_conditions
        if y.dim() == 1:
            return F.one_hot(y.long(), self.n_conditions).float()
        return y.float().reshape(batch, self.n_conditions)

    def _encoder_input(self, x: Tensor, cond: Tensor | None) -> Tensor:
        if cond is None:
            return x
        planes = cond[:, :, None, None].expand(-1, -1, *x.shape[2:]).to(x.dtype)
        return torch.cat([x, planes], dim=1)

    def _decode_pixels(self, z1: Tensor, cond: Tensor | None) -> Tensor:
        if cond is not None:
            z1 = torch.cat([z1, cond.expand(*z1.shape[:-1], -1)], dim=-1)
        lead = z1.shape[:-1]
        out = self.decoders[0](z1.reshape(-1, z1.shape[-1]))
        return out.view(*lead, *out.shape[1:])

    def _layer(self, module: nn.Module, inputs: Tensor) -> tuple[Tensor, Tensor]:
        lead = inputs.shape[:-1]
        out = module(inputs.reshape(-1, inputs.shape[-1]))
        return _split(out.view(*lead, out.shape[-1]))

    # -- inference ------------------------------------------------------------------------
    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(μ, log σ²) of q(z_L|x) for the top layer, along the path of posterior means (for
        one layer: exactly q(z|x)). Figures, the ex-post prior and VampPrior use it."""
        cond = self.condition(y, x.shape[0])
        mu, logvar = _split(self.encoders[0](self._encoder_input(x, cond)))
        for module in self.encoders[1:]:
            mu, logvar = self._layer(module, mu)
        return mu, logvar

    def _encode_prior_inputs(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """q(z_L|u) for pseudo-inputs, with an all-zero condition on a conditional model."""
        y = torch.zeros(u.shape[0], self.n_conditions, device=u.device) if self.n_conditions else None
        return self.encode(u, y)

    def forward(self, x: Tensor, y: Tensor | None = None, k: int = 1, stl: bool = False) -> Pass:
        """k reparameterised samples of every layer per example, and their log-densities.

        ``stl`` ("sticking the landing", Roeder et al. 2017): log q(z|·) gets gradients through
        the samples z only, not through q's parameters directly. The values are unchanged and the
        ELBO's gradient stays unbiased, but a latent dimension whose posterior matches its prior
        (an inactive unit) then adds no gradient noise to a Monte-Carlo KL, which otherwise grows
        with every such dimension (a two-layer model has 150 latent dimensions, most of them inactive).
        It is for the ELBO (k = 1): with k > 1 the importance-weighted bound's gradient would be biased.
        """
        if stl and k != 1:
            raise ValueError(
                f"stl=True is for the ELBO (k = 1), not k = {k}: the IWAE gradient would be biased"
            )
        cond = self.condition(y, x.shape[0])
        mu1, logvar1 = _split(self.encoders[0](self._encoder_input(x, cond)))
        z = [elbo.reparameterize(mu1, logvar1, n_samples=k)]  # (k, B, D₁)
        log_qz = elbo.gaussian_log_density(z[0], *_cut(stl, mu1, logvar1))
        for module in self.encoders[1:]:
            mu, logvar = self._layer(module, z[-1])
            z.append(elbo.reparameterize(mu, logvar))
            log_qz = log_qz + elbo.gaussian_log_density(z[-1], *_cut(stl, mu, logvar))
        log_pz = self.prior.log_prob(z[-1], encode=self._encode_prior_inputs)
        for module, lower, upper in zip(self.decoders[1:], z[:-1], z[1:], strict=True):
            mu, logvar = self._layer(module, upper)
            log_pz = log_pz + elbo.gaussian_log_density(lower, mu, logvar)
        params = self._decode_pixels(z[0], cond)  # (k, B, C·P, H, W)
        targets = x.unsqueeze(0).expand(k, *x.shape)
        log_px = self.likelihood.log_prob(targets.flatten(0, 1), params.flatten(0, 1)).view(k, -1)
        one_layer = len(self.latent_dims) == 1
        kl_dims = self.prior.kl_dims(mu1, logvar1) if one_layer else None
        return Pass(
            log_px=log_px,
            log_pz=log_pz,
            log_qz=log_qz,
            kl=None if kl_dims is None else kl_dims.sum(dim=-1),
            kl_dims=kl_dims,
            mu=mu1,
            params=params[0],
        )

    # -- generation -------------------------------------------------------------------------
    def prior_sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """n codes of the top layer drawn from the prior, on the model's device; a temperature
        below 1 scales them towards the origin (for N(0, I): a prior with σ = temperature)."""
        z = self.prior.sample(n, encode=self._encode_prior_inputs, generator=generator)
        return z if temperature == 1.0 else temperature * z

    @torch.no_grad()
    def generate(
        self,
        z: Tensor,
        y: Tensor | None = None,
        stochastic: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Mean image E[x|z] in [0, 1] for top-layer codes ``z``: lower layers are drawn from
        p(z_{l−1}|z_l) (``stochastic``: ancestral sampling, what a sample is; with ``generator``,
        the same draws every time) or set to their means (traversals, interpolations)."""
        for module in reversed(self.decoders[1:]):
            mu, logvar = self._layer(module, z)
            z = elbo.reparameterize(mu, logvar, generator=generator) if stochastic else mu
        return self.likelihood.mean(self._decode_pixels(z, self.condition(y, z.shape[0])))

    @torch.no_grad()
    def sample(
        self,
        n: int,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """n images decoded (as means) from ancestral samples of the prior."""
        return self.generate(self.prior_sample(n, temperature, generator), y, True, generator)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Mean of p(x|z₁ = μ₁(x)): the deterministic reconstruction shown in figures."""
        cond = self.condition(y, x.shape[0])
        mu1, _ = _split(self.encoders[0](self._encoder_input(x, cond)))
        return self.likelihood.mean(self._decode_pixels(mu1, cond))
