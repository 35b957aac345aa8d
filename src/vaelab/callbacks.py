"""Training callbacks: image grids and sample-quality numbers in TensorBoard as training goes."""

from __future__ import annotations

import logging
import threading
import time

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from vaelab.data.base import to_unit_float
from vaelab.errors import UserError
from vaelab.expost import ExpostSettings, fit_mixture, training_codes
from vaelab.grids import interpolation_grid, reconstruction_grid, sample_grid
from vaelab.judges import Judge, load_or_train_judge
from vaelab.sample_quality import MIN_SET, Reference, image_set_scores

log = logging.getLogger(__name__)

TAG = "val_quality"  # the sample-quality curves' group: sorts after train/ and val/


def due(trainer, every_n_epochs: int) -> bool:
    """Whether this validation epoch is one of every ``every_n_epochs`` (or the run's last)."""
    epoch = trainer.current_epoch + 1
    last = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch  # -1: no last epoch
    return epoch % every_n_epochs == 0 or last


class ImageGrids(L.Callback):
    """Every ``every_n_epochs`` validation epochs (and the last), on global rank 0 only, log:

    - ``images/reconstructions``: validation originals above their reconstructions;
    - ``images/samples``: decodings of a fixed set of prior draws (same z every epoch);
    - ``images/samples_expost``: decodings of draws from a cheap ex-post prior
      (``expost_components`` Gaussians fitted to ``expost_codes`` training codes this epoch),
      which show what the model can draw where its codes are, while N(0, I) draws may still
      land between them and decode to blurs;
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
        expost_components: int = 10,
        expost_codes: int = 2000,
    ):
        self.every_n_epochs = every_n_epochs
        self.expost = ExpostSettings(expost_components, "full", seed, expost_codes)
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
            **self._expost_samples(vae, trainer.datamodule),
            "images/interpolations": interpolation_grid(
                vae, x[:pairs], x[pairs : 2 * pairs], self.steps, y_a, y_b
            ),
        }
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for tag, grid in grids.items():
                    logger.experiment.add_image(tag, grid, global_step=trainer.global_step)

    def _expost_samples(self, vae, datamodule) -> dict[str, torch.Tensor]:
        """The grid of the cheap ex-post prior's samples (none: off, or no training split)."""
        if not self.expost.components or "train" not in getattr(datamodule, "splits", {}):
            return {}
        e = self.expost
        mixture = fit_mixture(training_codes(vae, datamodule, e.max_codes, e.seed), e.components, seed=e.seed)
        z = mixture.sample(self.n_samples, torch.Generator().manual_seed(e.seed))
        return {"images/samples_expost": sample_grid(vae, z.to(next(vae.parameters()).device))}


class SampleQuality(L.Callback):
    """Every ``every_n_epochs`` validation epochs (and the last), on global rank 0: the judge's
    numbers (:mod:`vaelab.sample_quality`) for ``n`` prior samples against ``n`` validation
    images, logged as ``val_quality/samples/…`` scalars (after ``train/`` and ``val/`` in
    TensorBoard's alphabetical list), so a curve shows whether samples get better.

    The dataset's judge is loaded at the start of the fit, or trained there the first time
    (about 20 s for MNIST on a 2-core CPU, a few minutes at most for CelebA) and cached in
    ``paths.cache_dir``; scores are against validation images. ``judge_seconds`` is how long
    that took, ``waited_seconds`` how much of it the fit stood still for (the training script
    counts it in metrics.json's ``judge_seconds``, not in its ``fit_seconds``).

    Under DDP, rank 0 loads or trains the judge in a background thread while every rank trains,
    so no rank waits for it at the next collective: validation epochs that end before it is
    ready have no numbers, and the run's last one (when it validates, and known to be the last
    by max_epochs or max_steps) waits for it, so the final numbers are there; the end of the
    fit waits for it in any case, so the test and ``judge_seconds`` find it done.
    """

    def __init__(self, every_n_epochs: int = 1, n: int = 1000, seed: int = 0, judge_epochs: int = 4):
        self.every_n_epochs, self.n, self.seed, self.judge_epochs = every_n_epochs, n, seed, judge_epochs
        self.judge: Judge | None = None
        self.judge_seconds: float | None = None  # loading or training the judge (None: not done)
        self.waited_seconds = 0.0  # the part of it the fit stood still for
        self._background: threading.Thread | None = None
        self._reference: Reference | None = None  # the judge's view of the validation images

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or self.judge is not None or self._background is not None:
            return
        if trainer.world_size > 1:
            log.info(
                "sample quality: rank 0 loads or trains the judge in the background; numbers once it is ready"
            )
            self._background = threading.Thread(
                target=self._load_in_background, args=(trainer.datamodule,), name="judge", daemon=True
            )
            self._background.start()
            return
        start = time.perf_counter()
        self._load(trainer.datamodule)
        self.waited_seconds += time.perf_counter() - start

    def _load(self, datamodule, tty: bool | None = None) -> None:
        start = time.perf_counter()
        try:
            judge, accuracy = load_or_train_judge(datamodule, self.seed, self.judge_epochs, tty=tty)
        except UserError as err:  # no labels: train without the numbers rather than not at all
            log.warning("no sample-quality numbers in this run: %s", err)
            return
        finally:
            self.judge_seconds = time.perf_counter() - start
        log.info("sample quality: judged by the %s judge (test accuracy %.4f)", datamodule.name, accuracy)
        self.judge = judge  # last: the training thread scores once it sees a judge here

    def _load_in_background(self, datamodule) -> None:
        try:
            self._load(datamodule, tty=False)  # log lines: a second bar would garble the run's
        except Exception:  # the ranks train on; a crash on rank 0 alone would leave them hanging
            log.exception("the sample-quality judge failed: no sample-quality numbers in this run")

    def _wait_if_last(self, trainer) -> None:
        """A judge still training in the background: waited for at the run's last validation
        epoch, else this epoch goes without numbers."""
        pending = self._background
        if pending is None or not pending.is_alive():
            return
        epoch = trainer.current_epoch + 1
        last = (trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch) or (
            0 < trainer.max_steps <= trainer.global_step
        )
        if not (last or trainer.should_stop):
            log.info("sample quality: no numbers at epoch %d, the judge is not ready yet", epoch)
            return
        log.info("sample quality: waiting for the judge to score the last epoch")
        start = time.perf_counter()
        pending.join()
        self.waited_seconds += time.perf_counter() - start

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._background is not None and self._background.is_alive():
            start = time.perf_counter()
            self._background.join()
            self.waited_seconds += time.perf_counter() - start

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not due(trainer, self.every_n_epochs):
            return
        self._wait_if_last(trainer)
        if self.judge is None:
            return
        vae, judge = pl_module.vae, self.judge.to(pl_module.device)
        if self._reference is None:  # the same validation images every epoch: judged once
            val = trainer.datamodule.splits["val"]["images"][: self.n]
            if len(val) < MIN_SET:
                return
            self._reference = Reference.of(judge, to_unit_float(val.to(pl_module.device)))
        n = len(self._reference.features)
        z = vae.prior_sample(n, generator=torch.Generator().manual_seed(self.seed))
        draws = torch.Generator().manual_seed(self.seed)  # the same codes and lower-layer draws each
        samples = vae.generate(z, stochastic=True, generator=draws)  # epoch; the run's RNG untouched
        scores = image_set_scores(judge, self._reference, samples)
        metrics = {f"{TAG}/samples/{k}": v for k, v in scores.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
