"""The importance-weighted bound (Burda et al. 2016): log (1/k) Σ_i p(x, z_i)/q(z_i|x).

It tightens towards log p(x) as k grows and trains the model on that tighter bound; k = 1 is
the ELBO with a one-sample Monte-Carlo KL, exactly (tests/test_objectives.py shows it).
"""

from __future__ import annotations

from torch import Tensor

from vaelab.model import elbo
from vaelab.model.objectives.base import Objective, Terms, check_number


class IWAE(Objective):
    def __init__(self, k: int = 5):
        self.k = check_number("IWAE", "k", k, low=1, whole=True)

    def __call__(self, vae, x: Tensor, y: Tensor | None = None, step: int = 0) -> Terms:
        out = vae(x, y, k=self.k)
        bound = elbo.iwae_bound(out.log_w).to(out.log_w.dtype)
        recon, kl = out.log_px.mean(dim=0), out.kl_mc
        terms = {"recon": recon, "kl": kl, "elbo": recon - kl, "iwae": bound}
        return Terms(-bound.mean(), terms)
