"""Training callbacks: image grids and sample-quality numbers in TensorBoard as training goes."""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from vaelab.data.base import to_unit_float
from vaelab.errors import UserError
from vaelab.grids import interpolation_grid, reconstruction_grid, sample_grid
from vaelab.judges import Judge, load_or_train_judge
from vaelab.sample_quality import MIN_SET, image_set_scores

log = logging.getLogger(__name__)


def due(trainer, every_n_epochs: int) -> bool:
    """Whether this validation epoch is one of every ``every_n_epochs`` (or the run's last)."""
    epoch = trainer.current_epoch + 1
    last = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch  # -1: no last epoch
    return epoch % every_n_epochs == 0 or last


class ImageGrids(L.Callback):
    """Every ``every_n_epochs`` validation epochs (and the last), on global rank 0 only, log:

    - ``images/reconstructions``: validation originals above their reconstructions;
    - ``images/samples``: decodings of a fixed set of prior draws (same z every epoch);
    - ``images/interpolations``: latent interpolations between pairs of validation images.

    A conditional VAE reconstructs and encodes the validation images with their own labels;
    its samples cycle through the classes.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        n_reconstructions: int = 32,
        n_samples: int = 64,
        n_interpolations: int = 4,
        interpolation_steps: int = 10,
        seed: int = 0,
    ):
        self.every_n_epochs = every_n_epochs
        self.n_reconstructions, self.n_samples = n_reconstructions, n_samples
        self.n_interpolations, self.steps, self.seed = n_interpolations, interpolation_steps, seed
        self._val_images: torch.Tensor | None = None
        self._val_labels: torch.Tensor | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and self._val_images is None:  # validation is unshuffled: same images
            need = max(self.n_reconstructions, 2 * self.n_interpolations)
            self._val_images = batch[0][:need].detach()
            labelled = (
                len(batch) > 1 and isinstance(batch[1], torch.Tensor) and len(batch[1]) == len(batch[0])
            )
            self._val_labels = batch[1][:need].detach() if labelled else None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self._val_images is None:
            return
        if not due(trainer, self.every_n_epochs):
            return
        vae = pl_module.vae
        g = torch.Generator().manual_seed(self.seed)
        z = vae.prior_sample(self.n_samples, generator=g)
        x, y = self._val_images, self._val_labels if vae.n_conditions else None
        pairs = min(self.n_interpolations, len(x) // 2)
        y_a, y_b = (None, None) if y is None else (y[:pairs], y[pairs : 2 * pairs])
        grids = {
            "images/reconstructions": reconstruction_grid(
                vae, x[: self.n_reconstructions], y=None if y is None else y[: self.n_reconstructions]
            ),
            "images/samples": sample_grid(vae, z),
            "images/interpolations": interpolation_grid(
                vae, x[:pairs], x[pairs : 2 * pairs], self.steps, y_a, y_b
            ),
        }
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for tag, grid in grids.items():
                    logger.experiment.add_image(tag, grid, global_step=trainer.global_step)


class SampleQuality(L.Callback):
    """Every ``every_n_epochs`` validation epochs (and the last), on global rank 0: the judge's
    numbers (:mod:`vaelab.sample_quality`) for ``n`` prior samples against ``n`` validation
    images, logged as ``quality/…`` scalars, so a curve shows whether samples get better.

    The dataset's judge is trained at the start of the first fit that needs it (about a minute
    for MNIST on a CPU) and cached in ``paths.cache_dir``; scores are against validation images.
    """

    def __init__(self, every_n_epochs: int = 1, n: int = 1000, seed: int = 0, judge_epochs: int = 4):
        self.every_n_epochs, self.n, self.seed, self.judge_epochs = every_n_epochs, n, seed, judge_epochs
        self.judge: Judge | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or self.judge is not None:
            return
        try:
            self.judge, accuracy = load_or_train_judge(trainer.datamodule, self.seed, self.judge_epochs)
        except UserError as err:  # no labels: train without the numbers rather than not at all
            log.warning("no sample-quality numbers in this run: %s", err)
            return
        name = trainer.datamodule.name
        log.info("sample quality: judged by the %s judge (test accuracy %.4f)", name, accuracy)

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.judge is None or not due(trainer, self.every_n_epochs):
            return
        vae = pl_module.vae
        val = trainer.datamodule.splits["val"]["images"][: self.n]
        real = to_unit_float(val.to(pl_module.device))
        if len(real) < MIN_SET:
            return
        z = vae.prior_sample(len(real), generator=torch.Generator().manual_seed(self.seed))
        draws = torch.Generator().manual_seed(self.seed)  # the same codes and lower-layer draws each
        samples = vae.generate(z, stochastic=True, generator=draws)  # epoch; the run's RNG untouched
        scores = image_set_scores(self.judge.to(pl_module.device), real, samples)
        metrics = {f"quality/samples/{k}": v for k, v in scores.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
