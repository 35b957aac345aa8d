"""Training callbacks: image grids in TensorBoard as training goes."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from vaelab.grids import interpolation_grid, reconstruction_grid, sample_grid


class ImageGrids(L.Callback):
    """Every ``every_n_epochs`` validation epochs (and the last), on global rank 0 only, log:

    - ``images/reconstructions``: validation originals above their reconstructions;
    - ``images/samples``: decodings of a fixed set of prior draws (same z every epoch);
    - ``images/interpolations``: latent interpolations between pairs of validation images.
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

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and self._val_images is None:  # validation is unshuffled: same images
            need = max(self.n_reconstructions, 2 * self.n_interpolations)
            self._val_images = batch[0][:need].detach()

    def _due(self, trainer) -> bool:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch  # -1: no last epoch
        return epoch % self.every_n_epochs == 0 or last

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self._val_images is None:
            return
        if not self._due(trainer):
            return
        vae = pl_module.vae
        g = torch.Generator().manual_seed(self.seed)
        z = vae.prior_sample(self.n_samples, generator=g)
        x = self._val_images
        pairs = min(self.n_interpolations, len(x) // 2)
        grids = {
            "images/reconstructions": reconstruction_grid(vae, x[: self.n_reconstructions]),
            "images/samples": sample_grid(vae, z),
            "images/interpolations": interpolation_grid(vae, x[:pairs], x[pairs : 2 * pairs], self.steps),
        }
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for tag, grid in grids.items():
                    logger.experiment.add_image(tag, grid, global_step=trainer.global_step)
