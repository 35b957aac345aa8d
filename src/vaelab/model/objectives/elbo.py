"""The β-ELBO with an optional linear KL warm-up: the derivation's objective (β = 1).

loss = −E_x[E_q log p(x|z) − β·KL(q(z|x) ‖ p(z))]; the KL is closed form when the prior has
one (N(0, I) on a one-layer model) and the one-sample Monte-Carlo estimate log q − log p
otherwise (``analytic_kl=false`` forces Monte Carlo, which makes k = 1 IWAE identical). A
Monte-Carlo KL can be differentiated by "sticking the landing" (``stl=true``, Roeder et al.
2017): the same values and an unbiased gradient, without the noise that every inactive latent
dimension adds otherwise (see VAE.forward). In short probes it helped ReLU nets and held a tanh
one back (conf/experiment/mnist_vae_2layer_relu.yaml), so it is off by default. It changes
gradients only, so k = 1 IWAE stays identical in value, not in gradient, when it is on.
"""

from __future__ import annotations

from torch import Tensor

from vaelab.model.objectives.base import Objective, Terms, check_number


class ELBO(Objective):
    def __init__(self, beta: float = 1.0, warmup_steps: int = 0, analytic_kl: bool = True, stl: bool = False):
        self.beta = check_number("ELBO", "beta", beta)
        self.warmup_steps = check_number("ELBO", "warmup_steps", warmup_steps, whole=True)
        self.analytic_kl = bool(analytic_kl)
        self.stl = bool(stl)

    def beta_at(self, step: int | None) -> float:
        """β, ramped linearly from 0 over ``warmup_steps`` (against posterior collapse); the full
        β when there is no training step (validation and test score the bound being aimed at)."""
        if self.warmup_steps <= 0 or step is None:
            return self.beta
        return self.beta * min(1.0, step / self.warmup_steps)

    def kl(self, out) -> Tensor:
        return out.kl if self.analytic_kl and out.kl is not None else out.kl_mc

    def __call__(self, vae, x: Tensor, y: Tensor | None = None, step: int | None = 0) -> Terms:
        out = vae(x, y, stl=self.stl)
        recon, kl = out.log_px.mean(dim=0), self.kl(out)
        beta = self.beta_at(step)
        scalars = {"beta": beta} if self.warmup_steps > 0 and step is not None else {}
        loss = -(recon - beta * kl).mean()
        return Terms(loss, {"recon": recon, "kl": kl, "elbo": recon - kl}, scalars)
