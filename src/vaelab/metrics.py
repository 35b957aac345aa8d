"""Evaluation numbers of a trained VAE: ELBO terms, the importance-weighted log-likelihood,
bits/dim and active units.

The math is :mod:`vaelab.model.elbo`'s; this module only draws the samples, in chunks so that memory
stays bounded however large k is, and turns nats into the units papers report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from vaelab.data.base import DEQUANTISED, to_unit_float
from vaelab.model import elbo
from vaelab.model.likelihoods.base import DATA_KINDS

LN2 = math.log(2.0)


# -- data as the likelihood sees it ---------------------------------------------------------
def dequantize(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """uint8 pixels k → (k + u)/256 with u ~ U[0, 1): a density on [0, 1]^D whose integral over
    each pixel's bin 1/256 wide lower-bounds the probability of the 8-bit value."""
    u = torch.rand(images.shape, generator=generator)
    return (images.float() + u.to(images.device)) / 256.0


def is_binary(images: Tensor) -> bool:
    """True when every uint8 pixel is 0 or 255: data a Bernoulli decoder assigns probabilities to."""
    return bool(((images == 0) | (images == 255)).all())


@dataclass(frozen=True)
class DataModel:
    """How the evaluation data are prepared and what bits/dim means for them."""

    dequantized: bool  # a density: scored on (k + u)/256
    discrete: bool  # a probability mass on the values as they are (binary or 8-bit)
    note: str  # one line for the report: which bits/dim formula applies

    @classmethod
    def for_likelihood(cls, kind: str, images: Tensor | None = None) -> DataModel:
        """``kind`` is the likelihood's ``data`` (see :mod:`vaelab.model.likelihoods.base`):
        continuous, binary or discrete. For binary, ``images`` (uint8) are checked to be 0/255
        only; without them the caller vouches that they are."""
        if kind not in DATA_KINDS:
            raise ValueError(f"likelihood data kind {kind!r} is not one of {', '.join(DATA_KINDS)}")
        if kind == "continuous":
            return cls(True, False, "density on uniformly dequantised 8-bit data: NLL/(D ln 2) + 8")
        if kind == "discrete":
            return cls(False, True, "probability mass on the 8-bit values (discretized): NLL/(D ln 2)")
        if images is None or is_binary(images):
            return cls(False, True, "Bernoulli decoder on binary pixels (discrete data): NLL/(D ln 2)")
        return cls(
            False,
            False,
            "none: a Bernoulli decoder on non-binary pixels is not a normalised likelihood "
            "(evaluate binarised data with dataset.binarize=true)",
        )

    def scored(self, seed: int) -> str:
        """What the evaluation scores, in the words training's metrics.json uses (scored_data)."""
        if self.dequantized:
            return f"{DEQUANTISED}, noise seed eval.seed={seed}"
        return "the values as they are (k/255; binary: 0 or 1)"

    def prepare(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        return dequantize(images, generator) if self.dequantized else to_unit_float(images)

    def bits_per_dim(self, nll: float, n_dims: int) -> float | None:
        if not (self.dequantized or self.discrete):
            return None
        return bits_per_dim(nll, n_dims, self.dequantized)


def bits_per_dim(nll: float, n_dims: int, dequantized_8bit: bool) -> float:
    """Bits per dimension from an NLL in nats per example.

    Discrete data: NLL/(D ln 2). A density on uniformly dequantised 8-bit data scaled to
    [0, 1]: each value's bin is 1/256 wide, so −log₂ P(x) ≤ −log₂ p(y) + D·log₂ 256, i.e. +8.
    """
    return nll / (n_dims * LN2) + (8.0 if dequantized_8bit else 0.0)


# -- the importance-weighted estimate ------------------------------------------------------------
@torch.no_grad()
def batch_terms(vae, x: Tensor, y: Tensor | None, k: int, max_decodes: int) -> dict[str, Tensor]:
    """Per-example terms of one batch (nats, float64) and the top layer's posterior means μ.

    The k importance samples z_i ~ q(z|x) are drawn in chunks of at most ``max_decodes``
    (sample, image) pairs, which bounds memory for any k; log w_i = log p(x, z_i) − log q(z_i|x)
    over every stochastic layer. recon averages log p(x|z_i); the KL is closed form where the
    model has one, else the Monte-Carlo mean of log q − log p over the same samples; the IWAE
    bound reuses them too, so IWAE ≥ ELBO up to the KL's Monte-Carlo noise.
    """
    per_chunk = max(1, max_decodes // x.shape[0])
    log_px, log_w, kl = [], [], None
    for start in range(0, k, per_chunk):
        out = vae(x, y, k=min(per_chunk, k - start))
        log_px.append(out.log_px.double())
        log_w.append(out.log_w.double())
        kl = out.kl
    log_px, log_w = torch.cat(log_px), torch.cat(log_w)
    recon = log_px.mean(dim=0)
    kl = kl.double() if kl is not None else (log_px - log_w).mean(dim=0)
    return {
        "recon": recon,
        "kl": kl,
        "elbo": elbo.elbo(recon, kl),
        "iwae": elbo.iwae_bound(log_w),
        "mu": vae.encode(x, y)[0],
    }


def active_units(mu: Tensor, threshold: float = 0.01) -> tuple[int, Tensor]:
    """(number of active dims, per-dim activity): A_j = Cov_x(E_q[z_j]) > threshold (Burda et al.)."""
    activity = mu.double().var(dim=0, unbiased=False)
    return int((activity > threshold).sum()), activity


@torch.no_grad()
def likelihood_metrics(
    vae,
    images: Tensor,
    labels: Tensor | None,
    data: DataModel,
    k: int,
    batch_size: int,
    max_decodes: int,
    active_threshold: float = 0.01,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, float | int | None], Tensor]:
    """Metrics over uint8 ``images`` (N, C, H, W), and the (N, D) posterior means for figures.

    ``progress(n)`` is called after each batch with its number of images (a bar, a log line).
    """
    progress = progress or (lambda _: None)
    device = next(vae.parameters()).device
    sums = {"recon": 0.0, "kl": 0.0, "elbo": 0.0, "iwae": 0.0}
    mus = []
    for start in range(0, len(images), batch_size):
        x = data.prepare(images[start : start + batch_size], generator).to(device)
        y = None if labels is None else labels[start : start + batch_size].to(device)
        terms = batch_terms(vae, x, y, k, max_decodes)
        for key in sums:
            sums[key] += float(terms[key].sum())
        mus.append(terms["mu"].cpu())
        progress(len(x))
    n, dims = len(images), images[0].numel()
    mu = torch.cat(mus)
    mean = {key: total / n for key, total in sums.items()}
    n_active, _ = active_units(mu, active_threshold)
    nll = -mean["iwae"]
    return {
        "n_examples": n,
        "k": k,
        "neg_elbo": -mean["elbo"],
        "recon": mean["recon"],
        "kl": mean["kl"],
        "nll_iwae": nll,
        "bits_per_dim": data.bits_per_dim(nll, dims),
        "bits_per_dim_elbo": data.bits_per_dim(-mean["elbo"], dims),
        "active_units": n_active,
        "latent_dim": mu.shape[1],
    }, mu


# -- FID (optional: needs torch-fidelity and local Inception weights) ---------------------------
FID_HOWTO = (
    "skipped: set fid.weights_path to a local copy of torch-fidelity's Inception weights "
    "(weights-inception-2015-12-05-6726825d.pth) and pip install torch-fidelity to compute FID"
)


def inception_fid(weights_path: str | None):
    """(FrechetInceptionDistance on the local weights, "") or (None, one line saying why not).

    Never downloads: torch-fidelity only fetches weights when no path is given, and without a
    path we do not build the metric at all.
    """
    if not weights_path:
        return None, FID_HOWTO
    if not Path(weights_path).is_file():
        return None, f"skipped: fid.weights_path={weights_path} does not exist"
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        metric = FrechetInceptionDistance(
            feature=2048,
            normalize=True,
            reset_real_features=False,
            feature_extractor_weights_path=weights_path,
        )
    except ModuleNotFoundError:
        return None, "skipped: FID needs torch-fidelity (pip install torch-fidelity)"
    except Exception as err:  # a file that is not the Inception state dict
        return None, f"skipped: cannot load Inception weights from {weights_path}: {err}"
    return metric, ""


def _rgb(x: Tensor) -> Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def fid_scores(
    vae,
    images: Tensor,
    n: int,
    batch_size: int,
    metric,
    progress: Callable[[int], None] | None = None,
    labels: Tensor | None = None,
) -> dict[str, float]:
    """FID of n prior samples and of the reconstructions of n test images, against those images.

    ``metric`` keeps its real-image statistics across ``reset()`` (reset_real_features=False),
    so the test images pass through Inception once. ``progress(b)`` counts the images through
    Inception, 3n in all (test images and their reconstructions, then samples). ``labels``: the
    images' own labels, which a conditional VAE reconstructs them with (its prior samples cycle
    through the classes).
    """
    progress = progress or (lambda _: None)
    device = next(vae.parameters()).device
    metric = metric.to(device)
    n = min(n, len(images))
    for start in range(0, n, batch_size):
        end = min(n, start + batch_size)
        real = to_unit_float(images[start:end]).to(device)
        y = None if labels is None else labels[start:end].to(device)
        metric.update(_rgb(real), real=True)
        metric.update(_rgb(vae.reconstruct(real) if y is None else vae.reconstruct(real, y)), real=False)
        progress(2 * len(real))
    scores = {"fid_reconstructions": float(metric.compute())}
    metric.reset()
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        metric.update(_rgb(vae.sample(b)), real=False)
        progress(b)
    scores["fid"] = float(metric.compute())
    return scores
