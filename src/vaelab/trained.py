"""A trained run from Python: ``vaelab.load(run)`` and ``vaelab.load_data(run)``.

A notebook wants a model it can call with images, not a LightningModule and a config to read:
:class:`TrainedModel` takes and returns float images in [0, 1] (N, C, H, W) on the CPU, samples
from the prior or the ex-post prior the run saved (:mod:`vaelab.expost`), and scores images with
the estimator ``src/eval.py`` uses, on the same data (dequantised for a density). Loading applies
vaelab's thread policy, as the command line does. docs/python.md shows it; a test runs every
code block there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from vaelab.errors import UserError
from vaelab.evaluate import device_of, load_checkpoint, model_from_checkpoint
from vaelab.expost import ExpostSettings, GaussianMixture, load_or_fit, sample_images
from vaelab.metrics import DataModel, batch_terms
from vaelab.rundir import records
from vaelab.threads import fixed_threads, set_threads

SAMPLERS = ("prior", "expost")


def _checkpoint_of(path: Path) -> Path:
    """A checkpoint file as given; for a run folder, its best checkpoint (the weights its test,
    result picture and saved ex-post prior used), else ``last.ckpt``."""
    if path.is_file():
        return path
    folder = path / "checkpoints"
    best = sorted(folder.glob("epoch*.ckpt"))
    if best:
        return best[-1]
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    raise UserError(
        f"{path} is neither a checkpoint nor a run folder with checkpoints/: give vaelab.load a "
        f"run folder (outputs/<date>/<time>) or a .ckpt file written by src/train.py."
    )


def _run_config(run_dir: Path) -> DictConfig | None:
    """The run's newest composed config (its last resume's, else its own), output dir set."""
    newest = records(run_dir)
    if not newest:
        return None
    cfg = OmegaConf.load(newest[-1] / "config.yaml")
    cfg.paths.output_dir = str(run_dir)
    return cfg


@dataclass
class TrainedModel:
    """A trained VAE with what a notebook wants of it; see :func:`load`."""

    vae: torch.nn.Module
    checkpoint: Path
    run_dir: Path
    config: DictConfig | None
    device: torch.device
    _mixture: GaussianMixture | None = field(default=None, repr=False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.vae.image_shape)

    @property
    def latent_dim(self) -> int:
        return self.vae.latent_dim

    def _in(self, x: Tensor) -> Tensor:
        return x.to(self.device, torch.float32)

    def _labels(self, y: Tensor | None) -> Tensor | None:
        return None if y is None or not self.vae.n_conditions else y.to(self.device)

    @torch.no_grad()
    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Posterior means of the top stochastic layer, (N, latent_dim)."""
        return self.vae.encode(self._in(x), self._labels(y))[0].cpu()

    @torch.no_grad()
    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Mean images of top-layer codes ``z`` (lower layers at their means)."""
        return self.vae.generate(z.to(self.device), self._labels(y)).float().cpu()

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.vae.reconstruct(self._in(x), self._labels(y)).float().cpu()

    @torch.no_grad()
    def interpolate(self, a: Tensor, b: Tensor, steps: int = 10) -> Tensor:
        """Decodings of the straight line between the codes of images ``a`` and ``b`` (C, H, W):
        (steps, C, H, W), ``a``'s end first."""
        za, zb = self.encode(a.unsqueeze(0)), self.encode(b.unsqueeze(0))
        t = torch.linspace(0, 1, steps).unsqueeze(1)
        return self.decode((1 - t) * za + t * zb)

    def expost(self) -> GaussianMixture:
        """The ex-post prior: the run's saved one for these weights, else fitted on its training
        data (as src/eval.py would) and saved in the run."""
        if self._mixture is None:
            settings = self._expost_settings()
            self._mixture = load_or_fit(self.vae, lambda: load_data_module(self), settings, self.run_dir)
        return self._mixture

    def _expost_settings(self) -> ExpostSettings:
        """The settings the run's result picture fitted with (so its saved file is the one)."""
        figure = (
            OmegaConf.select(self.config, "callbacks.result_figure", default=None) if self.config else None
        )
        if not figure or not figure.get("expost_components"):
            return ExpostSettings()
        return ExpostSettings(
            figure.expost_components,
            figure.expost_covariance,
            figure.seed,
            figure.get("expost_codes", 10_000),
        )

    @torch.no_grad()
    def sample(
        self,
        n: int,
        sampler: str = "prior",
        temperature: float = 1.0,
        seed: int | None = None,
        y: Tensor | None = None,
    ) -> Tensor:
        """n images from the prior or the ex-post prior (``sampler="expost"``); the same seed
        gives the same images. A hierarchical VAE draws its lower layers too; a conditional one
        decodes with the labels ``y`` (n class indices or attribute vectors), or cycles through
        its classes without."""
        if sampler not in SAMPLERS:
            raise UserError(f"sampler={sampler!r} is not valid: use prior or expost.")
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        mixture = self.expost() if sampler == "expost" else None
        return sample_images(self.vae, n, mixture, temperature, generator, self._labels(y)).float().cpu()

    @torch.no_grad()
    def log_likelihood(
        self, x: Tensor, k: int = 100, y: Tensor | None = None, seed: int = 0, batch_size: int = 100
    ) -> Tensor:
        """Per image, the importance-weighted estimate of log p(x) in nats with k samples: the
        estimator of src/eval.py on the data it scores, with its draws (its ``eval.seed`` is
        ``seed``, its ``eval.batch_size`` ``batch_size``): images in [0, 1] are taken as 8-bit
        values, dequantised for a density."""
        data = DataModel.for_likelihood(self.vae.likelihood.data)
        pixels = (x.float() * 255).round().clamp(0, 255).to(torch.uint8)
        generator, out = torch.Generator().manual_seed(seed), []
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # eval's draws (eval.seed), the caller's RNG untouched
            torch.manual_seed(seed)
            for start in range(0, len(pixels), batch_size):
                batch = data.prepare(pixels[start : start + batch_size], generator).to(self.device)
                labels = None if y is None else self._labels(y[start : start + batch_size])
                out.append(batch_terms(self.vae, batch, labels, k, max_decodes=2000)["iwae"].cpu())
        return torch.cat(out)


def load(path: str | os.PathLike, device: str = "cpu", threads="auto") -> TrainedModel:
    """A trained run (its folder: the best checkpoint; or a checkpoint file), in inference mode
    on ``device`` (``auto``: cuda when available), with vaelab's thread policy applied (``threads``:
    auto or a number), the run's composed config and its saved ex-post prior when it has one."""
    set_threads(fixed_threads(threads))
    ckpt_path = _checkpoint_of(Path(path))
    ckpt = load_checkpoint(str(ckpt_path))
    run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    vae = model_from_checkpoint(ckpt).to(device_of(device))
    return TrainedModel(vae, ckpt_path, run_dir, _run_config(run_dir), next(vae.parameters()).device)


def load_data_module(run: TrainedModel, data_dir: str | None = None):
    """The run's datamodule with its splits loaded (from the cache the run built)."""
    if run.config is None:
        raise UserError(f"{run.run_dir} has no saved config (.hydra/config.yaml): its data are unknown.")
    cfg = run.config.copy()
    if data_dir is not None:
        cfg.paths.data_dir = data_dir
    datamodule = instantiate(cfg.dataset)
    datamodule.splits = datamodule.load_splits()
    return datamodule


def load_data(run, split: str = "test", data_dir: str | None = None) -> tuple[Tensor, Tensor]:
    """(images as floats in [0, 1], labels) of a run's ``split`` (train, val, test), as the run's
    validation and test saw them (binarised once when it trained on binarised data)."""
    model = run if isinstance(run, TrainedModel) else load(run)
    splits = load_data_module(model, data_dir).splits
    if split not in splits:
        raise UserError(f"split={split!r} is not one of {', '.join(splits)}.")
    return splits[split]["images"].float() / 255, splits[split]["labels"]
