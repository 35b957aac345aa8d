"""Samples of a trained VAE written to disk, for FID tools and for looking at: one PNG per sample,
the uint8 tensor of all of them (``samples.pt``) and a grid, from the prior or the ex-post prior
the run saved (:mod:`vaelab.expost`), seeded, so the same seed writes the same images.

Like :mod:`vaelab.evaluate`, no Hydra decorators here: tests call :func:`run` with a composed
config and its override list.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchvision.utils import make_grid, save_image

from vaelab.config import validate
from vaelab.errors import UserError
from vaelab.evaluate import device_of, eval_config, load_checkpoint, model_from_checkpoint
from vaelab.expost import ExpostSettings, load_or_fit, sample_images
from vaelab.progress import Progress

log = logging.getLogger(__name__)

OWN_KEYS = ("task_name", "ckpt_path", "run_dir", "n", "sampler", "temperature", "seed", "out", "generate")


def _mixture(cfg: DictConfig, vae):
    """The run's ex-post prior for these weights (read, or fitted on its training data and saved)."""
    g = cfg.generate
    settings = ExpostSettings(g.expost_components, g.expost_covariance, 0, g.expost_codes)
    label = f"ex-post prior: {settings.components} Gaussians, encoding training codes"
    return load_or_fit(
        vae,
        lambda: _training_data(cfg),
        settings,
        cfg.run_dir,
        progress=lambda n: Progress(n, label, "codes"),
    )


def _training_data(cfg: DictConfig):
    """The run's datamodule with its splits loaded: only for a fit the run has not saved."""
    datamodule = instantiate(cfg.dataset)
    datamodule.splits = datamodule.load_splits()
    return datamodule


def _check(cfg: DictConfig) -> None:
    if cfg.sampler not in ("prior", "expost"):
        raise UserError(f"sampler={cfg.sampler!r} is not valid: use expost (the ex-post prior) or prior.")
    if not isinstance(cfg.n, int) or isinstance(cfg.n, bool) or cfg.n < 1:
        raise UserError(f"n={cfg.n!r} is invalid: it must be a whole number ≥ 1 (e.g. n=1000).")


def run(cfg: DictConfig, overrides: Sequence[str] = ()) -> Path:
    """Write ``cfg.n`` samples into ``cfg.out``; the folder."""
    start = time.perf_counter()
    _check(cfg)
    ckpt = load_checkpoint(cfg.ckpt_path)
    cfg.paths.output_dir = cfg.out  # where src/generate.py's Hydra puts its log: with the samples
    cfg = eval_config(cfg, overrides, OWN_KEYS)
    validate(cfg, hardware=False)
    vae = model_from_checkpoint(ckpt).to(device_of(cfg.generate.device))
    mixture = _mixture(cfg, vae) if cfg.sampler == "expost" else None
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    generator, parts = torch.Generator().manual_seed(cfg.seed), []
    with Progress(cfg.n, f"{cfg.sampler} samples to {out}", "images") as bar:
        for first in range(0, cfg.n, cfg.generate.batch_size):
            images = sample_images(
                vae, min(cfg.generate.batch_size, cfg.n - first), mixture, cfg.temperature, generator
            )
            images = images.float().cpu().clamp(0, 1)
            for i, image in enumerate(images, first):
                save_image(image, out / f"{i:05d}.png")
            parts.append(images.mul(255).round().to(torch.uint8))
            bar.update(len(images))
    torch.save(torch.cat(parts), out / "samples.pt")
    if cfg.generate.grid:
        shown = torch.cat(parts)[: cfg.generate.grid].float() / 255
        save_image(make_grid(shown, nrow=cfg.generate.per_row, padding=2, pad_value=1.0), out / "grid.png")
    log.info(
        "%d %s samples (T = %g, seed %d) in %.1f s: %s/*.png, samples.pt, grid.png",
        cfg.n,
        cfg.sampler,
        cfg.temperature,
        cfg.seed,
        time.perf_counter() - start,
        out,
    )
    return out
