"""Image grids of a VAE's behaviour: reconstructions, prior samples, latent interpolations.

Each function returns one (3, H, W) float image in [0, 1], ready for TensorBoard's
``add_image`` or for saving as a PNG, so the training callback and the evaluation figures
draw exactly the same pictures.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.utils import make_grid

from vaelab.model.vae import VAE


@torch.no_grad()
def reconstruction_grid(vae: VAE, x: Tensor, per_row: int = 8) -> Tensor:
    """Rows of originals, each followed by a row of their reconstructions."""
    x = x[: (len(x) // per_row) * per_row or len(x)]
    recon = vae.reconstruct(x)
    rows = []
    for i in range(0, len(x), per_row):
        rows += [x[i : i + per_row], recon[i : i + per_row]]
    return make_grid(torch.cat(rows).float().cpu(), nrow=min(per_row, len(x)), padding=2, pad_value=1.0)


@torch.no_grad()
def sample_grid(vae: VAE, z: Tensor, per_row: int = 8) -> Tensor:
    """Decoded means of the latent codes ``z`` (fixed codes make epochs comparable)."""
    images = vae.generate(z.to(next(vae.parameters()).device))
    return make_grid(images.float().cpu(), nrow=per_row, padding=2, pad_value=1.0)


@torch.no_grad()
def interpolation_grid(vae: VAE, x_start: Tensor, x_end: Tensor, steps: int = 10) -> Tensor:
    """One row per pair: decode the straight line between the posterior means of two images."""
    mu_a, mu_b = vae.encode(x_start)[0], vae.encode(x_end)[0]
    t = torch.linspace(0, 1, steps, device=mu_a.device).view(1, steps, 1)
    z = (1 - t) * mu_a.unsqueeze(1) + t * mu_b.unsqueeze(1)  # (pairs, steps, D)
    images = vae.generate(z.flatten(0, 1))
    return make_grid(images.float().cpu(), nrow=steps, padding=2, pad_value=1.0)
