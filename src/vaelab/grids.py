"""Image grids of a VAE's behaviour: reconstructions, prior samples, latent interpolations.

Each function returns one (3, H, W) float image in [0, 1], ready for TensorBoard's
``add_image`` or for saving as a PNG, so the training callback and the evaluation figures
draw exactly the same pictures.

A conditional VAE (``vae.n_conditions > 0``) reconstructs and encodes images with their own
labels ``y`` (class indices or attribute vectors), which callers pass along; decodings of prior
codes without labels cycle through the classes (:meth:`VAE.condition`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.utils import make_grid

from vaelab.model.vae import VAE


def labels_for(vae: VAE, y: Tensor | None) -> Tensor | None:
    """``y`` on the model's device for a conditional VAE; None for an unconditional one, which
    has no use for labels (a dataset's labels still colour its latent scatter)."""
    if y is None or not getattr(vae, "n_conditions", 0):
        return None
    return y.to(next(vae.parameters()).device)


@torch.no_grad()
def reconstruction_grid(vae: VAE, x: Tensor, per_row: int = 8, y: Tensor | None = None) -> Tensor:
    """Rows of originals, each followed by a row of their reconstructions (with their labels
    ``y`` on a conditional VAE)."""
    x = x[: (len(x) // per_row) * per_row or len(x)]
    y = labels_for(vae, y)
    recon = vae.reconstruct(x, None if y is None else y[: len(x)])
    rows = []
    for i in range(0, len(x), per_row):
        rows += [x[i : i + per_row], recon[i : i + per_row]]
    return make_grid(torch.cat(rows).float().cpu(), nrow=min(per_row, len(x)), padding=2, pad_value=1.0)


@torch.no_grad()
def sample_grid(vae: VAE, z: Tensor, per_row: int = 8, y: Tensor | None = None, seed: int = 0) -> Tensor:
    """Samples from the top-layer codes ``z``: lower stochastic layers drawn with a fixed seed
    (fixed codes and draws make epochs comparable), pixels as means; a conditional VAE decodes
    them with labels ``y``, or cycles through its classes without."""
    device, draws = next(vae.parameters()).device, torch.Generator().manual_seed(seed)
    images = vae.generate(z.to(device), labels_for(vae, y), stochastic=True, generator=draws)
    return make_grid(images.float().cpu(), nrow=per_row, padding=2, pad_value=1.0)


@torch.no_grad()
def interpolation_grid(
    vae: VAE,
    x_start: Tensor,
    x_end: Tensor,
    steps: int = 10,
    y_start: Tensor | None = None,
    y_end: Tensor | None = None,
) -> Tensor:
    """One row per pair: decode the straight line between the posterior means of two images
    (of the top layer, for a hierarchical VAE). A conditional VAE encodes each image with its
    label and decodes along the straight line between the two label vectors too."""
    y_start, y_end = labels_for(vae, y_start), labels_for(vae, y_end)
    mu_a, mu_b = vae.encode(x_start, y_start)[0], vae.encode(x_end, y_end)[0]
    t = torch.linspace(0, 1, steps, device=mu_a.device).view(1, steps, 1)
    z = (1 - t) * mu_a.unsqueeze(1) + t * mu_b.unsqueeze(1)  # (pairs, steps, D)
    cond = None
    if y_start is not None and y_end is not None:
        a, b = vae.condition(y_start, len(x_start)), vae.condition(y_end, len(x_end))
        cond = ((1 - t) * a.unsqueeze(1) + t * b.unsqueeze(1)).flatten(0, 1)  # (pairs·steps, n)
    images = vae.generate(z.flatten(0, 1), cond)
    return make_grid(images.float().cpu(), nrow=steps, padding=2, pad_value=1.0)
