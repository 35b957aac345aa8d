"""An ex-post prior for sampling (Ghosh et al. 2020): a Gaussian mixture fitted after training
to the training set's posterior means.

A VAE's aggregate posterior rarely fills N(0, I): codes cluster, and prior draws that land in
the holes between clusters decode to blurs. Drawing z from a mixture fitted where the codes
actually are gives samples that look like the data, without retraining. Components have full
covariances (codes within a cluster are correlated; ``covariance="diag"`` keeps only their
variances), fitted by EM from a k-means++ start in float64; the fit is seeded, so the same means
give the same mixture.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vaelab.data.base import to_unit_float
from vaelab.errors import UserError

MIN_VAR = 1e-4  # added to each component's variances: a collapsed component would give log 0
COVARIANCES = ("full", "diag")


@dataclass
class GaussianMixture:
    weights: Tensor  # (K,)
    means: Tensor  # (K, D)
    scale_trils: Tensor  # (K, D, D): lower Cholesky factors of the covariances

    @property
    def covariances(self) -> Tensor:
        return self.scale_trils @ self.scale_trils.mT

    def log_prob(self, z: Tensor) -> Tensor:
        """log Σ_k w_k N(z; m_k, Σ_k), per row of ``z`` (N, D)."""
        return torch.logsumexp(_component_log_probs(z.double(), self) + self.weights.log(), dim=1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], 1, generator=generator, dtype=torch.float64)
        return (self.means[k] + (self.scale_trils[k] @ eps).squeeze(-1)).float()


def _component_log_probs(z: Tensor, gm: GaussianMixture) -> Tensor:
    """(N, K): log N(z_n; m_k, Σ_k), one component at a time (no (N, K, D) tensor: 55,000 codes
    × 50 components × 128 dims would be 2.8 GB)."""
    half_log_det = gm.scale_trils.diagonal(dim1=1, dim2=2).log().sum(1)  # (K,)
    columns = []
    for mean, tril in zip(gm.means, gm.scale_trils, strict=True):
        white = torch.linalg.solve_triangular(tril, (z - mean).T, upper=False)  # (D, N)
        columns.append(white.square().sum(0))
    mahalanobis = torch.stack(columns, dim=1)
    return -0.5 * (mahalanobis + z.shape[1] * math.log(2 * math.pi)) - half_log_det


def _kmeans_pp(z: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k starting centres, each drawn with probability ∝ squared distance to the nearest so far."""
    centres = [z[torch.randint(len(z), (1,), generator=generator)]]
    for _ in range(k - 1):
        d2 = torch.cdist(z, torch.cat(centres)).min(1).values.square()
        if d2.sum() == 0:  # fewer distinct points than components: any point will do
            d2 = torch.ones_like(d2)
        centres.append(z[torch.multinomial(d2 / d2.sum(), 1, generator=generator)])
    return torch.cat(centres)


def _scale_trils(z: Tensor, resp: Tensor, mass: Tensor, means: Tensor, covariance: str) -> Tensor:
    """The M step's Cholesky factors: each component's responsibility-weighted covariance (or
    only its diagonal) plus MIN_VAR on the diagonal."""
    eye = torch.eye(z.shape[1], dtype=z.dtype)
    factors = []
    for r, m, total in zip(resp.T, means, mass, strict=True):
        centred = z - m
        if covariance == "diag":
            cov = torch.diag((r @ centred.square()) / total)
        else:
            cov = (centred * r[:, None]).T @ centred / total
        factors.append(torch.linalg.cholesky(cov + MIN_VAR * eye))
    return torch.stack(factors)


def fit_mixture(
    z: Tensor, components: int, iterations: int = 100, seed: int = 0, covariance: str = "full"
) -> GaussianMixture:
    """EM for a Gaussian mixture on the rows of ``z`` (N, D), with full or diagonal
    covariances; stops early once the mean log-likelihood improves by less than 1e-6 nats."""
    if covariance not in COVARIANCES:
        raise UserError(
            f"eval.expost_covariance={covariance!r} is not valid; the ex-post prior's components have "
            f"full covariances or diagonal ones: use one of {', '.join(COVARIANCES)}."
        )
    z = z.double()
    generator = torch.Generator().manual_seed(seed)
    k = min(components, len(z))
    start = torch.diag(z.var(0) + MIN_VAR).sqrt()
    gm = GaussianMixture(
        weights=torch.full((k,), 1.0 / k, dtype=torch.float64),
        means=_kmeans_pp(z, k, generator),
        scale_trils=start.expand(k, -1, -1).clone(),
    )
    previous = -math.inf
    for _ in range(iterations):
        joint = _component_log_probs(z, gm) + gm.weights.log()
        total = torch.logsumexp(joint, dim=1, keepdim=True)
        resp = (joint - total).exp()  # (N, K) responsibilities
        mass = resp.sum(0) + 1e-12
        means = (resp.T @ z) / mass[:, None]
        gm = GaussianMixture(mass / mass.sum(), means, _scale_trils(z, resp, mass, means, covariance))
        current = float(total.mean())
        if current - previous < 1e-6:
            break
        previous = current
    return gm


@torch.no_grad()
def fit_to_training_codes(
    vae,
    datamodule,
    components: int,
    seed: int = 0,
    covariance: str = "full",
    progress: Callable[[int], object] | None = None,
    chunk: int = 1000,
) -> GaussianMixture:
    """The ex-post prior of ``vae``: ``components`` Gaussians fitted to the top-layer posterior
    means of the datamodule's loaded training images (binarised once, as the model saw 0/1
    images; each with its own label on a conditional VAE). ``progress(n)`` after each chunk."""
    train = datamodule.splits["train"]["images"]
    if datamodule.binarize:
        train = datamodule.fixed_binarization("train", train)
    labels = datamodule.splits["train"]["labels"] if vae.n_conditions else None
    device, means = next(vae.parameters()).device, []
    for start in range(0, len(train), chunk):
        x = to_unit_float(train[start : start + chunk]).to(device)
        y = None if labels is None else labels[start : start + chunk].to(device)
        means.append(vae.encode(x, y)[0].float().cpu())
        if progress is not None:
            progress(len(x))
    return fit_mixture(torch.cat(means), components, seed=seed, covariance=covariance)
