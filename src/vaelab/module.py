"""VAEModule: the LightningModule that trains a composed :class:`~vaelab.model.vae.VAE`.

The VAE's parts (network, likelihood, prior), the objective, the optimiser and an optional LR
scheduler arrive as ``_target_`` specs (``conf/model``, ``conf/net``, … with ``_recursive_:
false``) and are stored as plain hyper-parameters, so a checkpoint alone rebuilds the model.
Lightning's automatic optimisation runs every step (clipping, accumulation and schedulers are
Lightning's). Logged names: ``train/loss`` and each of the objective's terms (``recon``, ``kl``,
``elbo``, …) per step, the same under ``val/`` and ``test/`` as epoch means synchronised across
DDP ranks, plus step scalars such as ``train/beta`` during warm-up and ``train/sigma`` for a
learned decoder σ.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from vaelab.errors import UserError
from vaelab.guards import DeferredCheck, check_finite_loss
from vaelab.model.nets.conv import use_channels_last
from vaelab.model.parts import accepted_keys, build, target_of
from vaelab.model.vae import VAE
from vaelab.optim import fused_allowed

SCHEDULER_DEFAULTS = {"interval": "epoch", "frequency": 1, "monitor": "val/loss"}
# validation and test draw their z samples and dequantisation noise from this seed (plus the
# rank), as src/eval.py draws from eval.seed: every epoch scores the same data the same way
EVAL_SEED = 0


def _plain(value):
    """Specs as plain dicts and lists: what a ``weights_only`` checkpoint stores and loads."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


class VAEModule(L.LightningModule):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dims: int | list[int],
        net: Mapping,
        likelihood: Mapping,
        prior: Mapping,
        objective: Mapping,
        optimizer: Mapping,
        scheduler: Mapping | None = None,
        top_net: Mapping | None = None,
        conditional: bool = False,
        n_conditions: int = 0,
        compile: bool = False,
        channels_last: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(
            {k: _plain(v) for k, v in locals().items() if k not in ("self", "__class__")}
        )
        hp = self.hparams
        if conditional and n_conditions < 1:
            raise UserError(
                "model.conditional=true needs labels, but this dataset has none (CelebA's come from "
                "list_attr_celeba.txt next to its images): add that file, or use model=vae."
            )
        self.vae = VAE(
            image_shape=tuple(hp.image_shape),
            latent_dims=hp.latent_dims,
            net=hp.net,
            likelihood=hp.likelihood,
            prior=hp.prior,
            top_net=hp.top_net,
            n_conditions=hp.n_conditions if conditional else 0,
        )
        self.objective = build(hp.objective)
        target_of(hp.optimizer)  # a bad optimiser or scheduler spec fails now, not after setup
        if scheduler is not None:
            target_of(hp.scheduler)
        if channels_last:
            use_channels_last(self.vae)
        if compile:  # in place: checkpoints keep their keys, compiled or not
            self.vae.compile()
        self._deferred: DeferredCheck | None = None  # the NaN check on an accelerator
        self._logging_step = False
        self._seeded: contextlib.ExitStack | None = None  # validation's and test's own random streams

    def _step(self, batch, stage: str, log: bool = True, write: bool = False) -> Tensor:
        x, y = batch[0], (batch[1] if self.vae.n_conditions else None)
        train = stage == "train"  # train: per step; val/test: epoch means, synced over ranks
        # the step drives schedules such as β's warm-up: training only; val/test score the full bound
        out = self.objective(self.vae, x, y, step=self.global_step if train else None)
        if train:  # a NaN/inf never reaches the weights (see vaelab.guards)
            self._deferred.watch(out.loss, out.terms) if self._deferred else check_finite_loss(
                out.loss, out.terms, self
            )
        if not log:
            return out.loss
        metrics = {f"{stage}/loss": out.loss, **{f"{stage}/{k}": v.mean() for k, v in out.terms.items()}}
        opts = dict(on_step=train, on_epoch=not train, sync_dist=not train, batch_size=x.shape[0])
        self.log(f"{stage}/loss", out.loss, prog_bar=True, **opts)
        self.log_dict({k: v for k, v in metrics.items() if k != f"{stage}/loss"}, **opts)
        if train:
            scalars = {**out.scalars, **self.vae.likelihood.extra_terms()}
            for name, value in scalars.items():
                metrics[f"train/{name}"] = value
                self.log(f"train/{name}", value, on_step=True, batch_size=x.shape[0])
            if write:
                self._write_train_point(metrics)
        return out.loss

    def _write_train_point(self, metrics: dict) -> None:
        """Write a step Lightning's logger does not (the first, an epoch's last) to the loggers,
        at the step Lightning would use, so each of those steps gets exactly one point."""
        values = {k: float(v.detach()) if isinstance(v, Tensor) else float(v) for k, v in metrics.items()}
        for logger in self.loggers:
            logger.log_metrics(values, step=self.global_step)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        self._logging_step = self._logs_step(batch_idx)
        # the first step and an epoch's last are written here when Lightning would skip them
        # (never on a step that only accumulates gradients: its optimizer step writes)
        write = self._logging_step and self._steps_optimizer(batch_idx) and not self._lightning_writes_step()
        return self._step(batch, "train", log=self._logging_step, write=write)

    def _logs_step(self, batch_idx: int) -> bool:
        """Whether this step's train metrics are logged: on the steps Lightning's logger writes
        (:meth:`_lightning_writes_step`), the first step, and each epoch's last step.

        ``self.log`` costs about a millisecond of host time per call, as much as a whole step
        of a small VAE, so the train metrics are logged only on the steps that write them (the
        progress bar's loss updates at the same rate).
        """
        if self.trainer.log_every_n_steps == 0:
            return False
        first, last = self.global_step == 0, batch_idx + 1 >= self.trainer.num_training_batches
        return first or last or self._lightning_writes_step()

    def _lightning_writes_step(self) -> bool:
        """Lightning's rule for writing train step metrics (its logger connector's
        ``should_update_logs``), from public trainer state: every ``log_every_n_steps``-th
        step (counted from 1), when the trainer is stopping, and every step of a fast_dev_run."""
        trainer = self.trainer
        every = trainer.log_every_n_steps
        due = every > 0 and (self.global_step + 1) % every == 0
        return due or trainer.should_stop or bool(trainer.fast_dev_run)

    def _steps_optimizer(self, batch_idx: int) -> bool:
        """Whether this batch ends a gradient accumulation (always, without accumulation)."""
        every, last = self.trainer.accumulate_grad_batches, batch_idx + 1 >= self.trainer.num_training_batches
        return (batch_idx + 1) % every == 0 or last

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    # -- validation and test on fixed random streams -----------------------------------------
    def _seed_evaluation(self) -> None:
        """Random streams seeded with EVAL_SEED until the epoch ends, then training's restored
        as they were: the evaluation noise never depends on how far training got."""
        self._end_seeded_evaluation()
        device = self.device
        devices = [device.index or 0] if device.type not in ("cpu", "meta") else []
        self._seeded = contextlib.ExitStack()
        self._seeded.enter_context(torch.random.fork_rng(devices=devices, device_type=device.type))
        torch.manual_seed(EVAL_SEED + self.global_rank)

    def _end_seeded_evaluation(self) -> None:
        if self._seeded is not None:
            self._seeded.close()
            self._seeded = None

    def on_validation_epoch_start(self) -> None:
        self._seed_evaluation()

    def on_validation_epoch_end(self) -> None:
        self._end_seeded_evaluation()

    def on_test_epoch_start(self) -> None:
        self._seed_evaluation()

    def on_test_epoch_end(self) -> None:
        self._end_seeded_evaluation()

    def teardown(self, stage: str) -> None:  # an epoch that raised: training's streams back too
        self._end_seeded_evaluation()

    def configure_optimizers(self):
        """The optimiser spec (``_partial_: true``) called on the parameters, fused where torch
        and Lightning allow (:mod:`vaelab.optim`), and the optional scheduler spec on it."""
        trainer, hp = self.trainer, self.hparams
        make = instantiate(hp.optimizer)
        options = {}
        if "fused" not in hp.optimizer and "fused" in (accepted_keys(target_of(hp.optimizer)) or ()):
            options["fused"] = fused_allowed(trainer.precision, clipping=(trainer.gradient_clip_val or 0) > 0)
        optimizer = make(params=self.parameters(), **options)
        if hp.scheduler is None:
            return optimizer
        spec = dict(hp.scheduler)
        how = {key: spec.pop(key, default) for key, default in SCHEDULER_DEFAULTS.items()}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": instantiate(spec)(optimizer), **how}}

    # -- the non-finite check on an accelerator (vaelab.guards) ----------------------------
    def _defers_loss_check(self) -> bool:
        """A host sync per step is free on the CPU and a stall on an accelerator; under DDP
        (CPU too) the deferred check also makes all ranks skip and stop together, where a rank
        stopping alone before backward would leave the others waiting in its all-reduce.
        Deferring needs fused Adam (it skips a bad step on the device) and whole gradients on
        every rank (one device or DDP; FSDP and DeepSpeed shard them, so ranks would disagree)."""
        whole_gradients = type(self.trainer.strategy) in (SingleDeviceStrategy, DDPStrategy)
        fused = getattr(self.optimizers(use_pl_optimizer=False), "fused", False)
        worth_it = self.device.type != "cpu" or self.trainer.world_size > 1
        return worth_it and fused and whole_gradients

    def on_train_start(self) -> None:
        self._deferred = None
        if self._defers_loss_check():  # read on logging steps, so two rows spare: it never fills first
            rows, world = self.trainer.log_every_n_steps + 2, self.trainer.world_size
            self._deferred = DeferredCheck(rows, across_ranks=world > 1)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self._deferred and self._logging_step:  # Lightning syncs right after, to log
            self._deferred.raise_if_found(self)

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._deferred:
            self._deferred.before_optimizer_step(optimizer, self.global_step, self)

    def on_train_epoch_end(self) -> None:
        if self._deferred:
            self._deferred.raise_if_found(self)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._deferred:  # never save after a bad step the host has not seen yet
            self._deferred.raise_if_found(self)
