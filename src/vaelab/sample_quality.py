"""Sample-quality numbers that work offline, each read against its floor on real images.

A judge (:mod:`vaelab.judges`) trained on the dataset scores three sets of images the same
way: prior samples, reconstructions of held-out images, and real held-out images (the floor:
what perfect samples would score). For a classifier judge, the share of images it classifies
with confidence ≥ 0.9 and the normalised entropy of its predicted-class histogram (1 = every
class equally often: no mode collapse); for any judge, the Fréchet distance between the set's
features and the test images' and precision/recall (Kynkäänniemi et al. 2019: the share of
samples inside the real data's k-NN balls, and of real images inside the samples'), all from
one pass of each set through the judge (the test images' once for every set). A sampler that replays
training codes can score high confidence; the Fréchet distance and recall catch it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vaelab.data.base import to_unit_float
from vaelab.judges import Judge

CONFIDENCE = 0.9
NEIGHBOURS = 3  # k of the k-NN balls of precision/recall (Kynkäänniemi et al. use 3)
MIN_SET = NEIGHBOURS + 1  # images a set needs: each one's k-th nearest other image


def confident_share(probs: Tensor, threshold: float = CONFIDENCE) -> float:
    """Share of images whose top class has probability ≥ ``threshold``."""
    return float((probs.max(1).values >= threshold).float().mean())


def class_entropy(probs: Tensor) -> float:
    """Entropy of the histogram of predicted classes, divided by log(classes): 1 = uniform."""
    counts = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum() / math.log(probs.shape[1]))


def _rows(a: Tensor, b: Tensor, reduce: Callable[[Tensor], Tensor], chunk: int = 1024) -> Tensor:
    """``reduce`` of each row of the distance matrix between ``a`` and ``b``, ``chunk`` rows at a
    time: 10,000 × 10,000 distances would take 800 MB at once."""
    a, b = a.float(), b.float()
    return torch.cat([reduce(torch.cdist(part, b)) for part in a.split(chunk)])


def _radii(features: Tensor, k: int) -> Tensor:
    """Distance from each point to its k-th nearest other point of the same set."""
    return _rows(features, features, lambda d: d.kthvalue(k + 1, dim=1).values)  # +1: itself, at 0


def _share_inside(points: Tensor, centres: Tensor, radii: Tensor) -> float:
    """Share of ``points`` inside at least one ball (centre, radius)."""
    return float(_rows(points, centres, lambda d: (d <= radii[None, :]).any(1)).float().mean())


def precision_recall(real: Tensor, fake: Tensor, k: int = NEIGHBOURS) -> tuple[float, float]:
    """(precision, recall) of ``fake`` against ``real`` features (Kynkäänniemi et al. 2019)."""
    return _share_inside(fake, real, _radii(real, k)), _share_inside(real, fake, _radii(fake, k))


@torch.no_grad()
def judged(judge: Judge, images: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """(features, class probabilities or attribute probabilities) of float images in [0, 1]."""
    feats, probs = [], []
    for start in range(0, len(images), batch_size):
        f = judge.features(images[start : start + batch_size])
        logits = judge.head(f)
        feats.append(f)
        probs.append(logits.sigmoid() if judge.multi_label else logits.softmax(1))
    return torch.cat(feats), torch.cat(probs)


def _gaussian(features: Tensor) -> tuple[Tensor, Tensor]:
    f = features.double()
    return f.mean(0), f.T.cov()


def frechet(real: tuple[Tensor, Tensor], fake: tuple[Tensor, Tensor]) -> float:
    """Fréchet distance between Gaussians (mean, covariance): |m₁ − m₂|² + tr(C₁ + C₂ − 2(C₁C₂)^½),
    the trace of the root from the eigenvalues of C₁C₂ (real and ≥ 0 up to rounding)."""
    (m1, c1), (m2, c2) = real, fake
    root_trace = torch.linalg.eigvals(c1 @ c2).real.clamp(min=0).sqrt().sum()
    return float((m1 - m2).square().sum() + c1.trace() + c2.trace() - 2 * root_trace)


def frechet_distance(judge: Judge, real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between the judge's features of two image sets (float in [0, 1])."""
    return frechet(_gaussian(judged(judge, real)[0]), _gaussian(judged(judge, fake)[0]))


@dataclass(frozen=True)
class Reference:
    """The judge's view of the real images every set is scored against, computed once."""

    features: Tensor
    gaussian: tuple[Tensor, Tensor]

    @classmethod
    def of(cls, judge: Judge, images: Tensor) -> Reference:
        features = judged(judge, images)[0]
        return cls(features, _gaussian(features))


def image_set_scores(judge: Judge, test: Tensor | Reference, images: Tensor) -> dict[str, float]:
    """Every number for one set of images, against the test images ``test`` (or their
    :class:`Reference`, when several sets are scored against the same images)."""
    reference = test if isinstance(test, Reference) else Reference.of(judge, test)
    feats, probs = judged(judge, images)
    precision, recall = precision_recall(reference.features, feats)
    scores = {"fd": frechet(reference.gaussian, _gaussian(feats)), "precision": precision, "recall": recall}
    if not judge.multi_label:
        scores |= {"confident": confident_share(probs), "class_entropy": class_entropy(probs)}
    return scores


@torch.no_grad()
def sample_quality(
    vae,
    judge: Judge,
    test: Tensor,
    held_out: Tensor,
    n: int,
    temperature: float = 1.0,
    progress: Callable[[str], None] | None = None,
    samplers: dict[str, Callable[[int], Tensor]] | None = None,
    held_out_labels: Tensor | None = None,
) -> dict[str, float]:
    """``quality/<set>/<number>`` for prior samples, any other ``samplers`` (name → function of
    a count giving images in [0, 1], e.g. the ex-post prior's), reconstructions of held-out
    images and the held-out images themselves (the floor), each set ``n`` images, all against
    ``n`` test images (uint8). ``held_out`` must not be the test images (val, or train), else
    the floor is 0. A conditional VAE reconstructs the held-out images with their own labels
    ``held_out_labels``; its prior samples cycle through the classes (:meth:`VAE.condition`)."""
    progress = progress or (lambda _: None)
    device = next(vae.parameters()).device
    judge = judge.to(device)
    real = to_unit_float(test[:n].to(device))
    other = to_unit_float(held_out[:n].to(device))
    labels = None
    if held_out_labels is not None and getattr(vae, "n_conditions", 0):
        labels = held_out_labels[:n].to(device)

    def reconstructions() -> Tensor:
        if labels is None:
            return torch.cat([vae.reconstruct(x) for x in other.split(500)])
        return torch.cat(
            [vae.reconstruct(x, y) for x, y in zip(other.split(500), labels.split(500), strict=True)]
        )

    sets = {
        "samples": lambda: _decode_in_batches(lambda b: vae.sample(b, temperature=temperature), n),
        **{name: (lambda f=f: _decode_in_batches(f, n)) for name, f in (samplers or {}).items()},
        "reconstructions": reconstructions,
        "real": lambda: other,
    }
    out, reference = {}, Reference.of(judge, real)
    for name, make in sets.items():
        out |= {f"quality/{name}/{k}": v for k, v in image_set_scores(judge, reference, make()).items()}
        progress(name)  # one set done
    return out


def _decode_in_batches(sample: Callable[[int], Tensor], n: int, batch_size: int = 500) -> Tensor:
    return torch.cat([sample(min(batch_size, n - start)) for start in range(0, n, batch_size)])
