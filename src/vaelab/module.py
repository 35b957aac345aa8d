"""VAEModule: the LightningModule that trains a :class:`VAE` by maximising the (β-)ELBO.

The loss is the negative β-ELBO per example (nats, batch mean). The module runs its own
optimisation step (zero_grad, backward, fused Adam step) unless a trainer option needs
Lightning's loop (see :attr:`VAEModule.automatic_optimization`). Logged names:
``train/loss``, ``train/elbo``, ``train/recon``, ``train/kl`` (+ ``train/sigma`` for a
learned decoder σ, ``train/beta`` during KL warm-up) and the same under ``val/`` and
``test/``, synchronised across DDP ranks at epoch end.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import GradientAccumulationScheduler
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import Tensor

from vaelab.checkpoints import carry_step_count
from vaelab.guards import DeferredCheck, check_finite_loss
from vaelab.nets.conv import use_channels_last
from vaelab.optim import Adam, fused_allowed
from vaelab.vae import VAE


class VAEModule(L.LightningModule):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int = 32,
        net: str = "mlp",
        hidden_dims: tuple[int, ...] = (400,),
        channels: tuple[int, ...] = (32, 64, 128, 256),
        likelihood: str = "gaussian",
        sigma: float = 0.1,
        learn_sigma: bool = False,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        compile: bool = False,
        channels_last: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.vae = VAE(
            image_shape=tuple(image_shape),
            latent_dim=latent_dim,
            net=net,
            likelihood=likelihood,
            sigma=sigma,
            learn_sigma=learn_sigma,
            hidden_dims=tuple(hidden_dims),
            channels=tuple(channels),
        )
        if channels_last and net == "conv":
            use_channels_last(self.vae)
        if compile:  # in place: checkpoints keep their keys, compiled or not
            self.vae.compile()
        self._deferred: DeferredCheck | None = None  # the NaN check on an accelerator
        self._logging_step = False

    @property
    def automatic_optimization(self) -> bool:
        """Whether Lightning's optimisation loop runs each step: only when a trainer option
        needs it (see :func:`needs_lightnings_loop`). Otherwise :meth:`training_step` runs the
        same zero_grad, backward and step itself, with less host work per step (on one CPU core
        an MNIST step's Lightning overhead falls from ~1.7 to ~1.3 ms)."""
        return self._trainer is not None and needs_lightnings_loop(self._trainer)

    def current_beta(self) -> float:
        """β, ramped linearly from 0 over ``kl_warmup_steps`` (against posterior collapse)."""
        warmup = self.hparams.kl_warmup_steps
        if warmup <= 0:
            return self.hparams.beta
        return self.hparams.beta * min(1.0, self.global_step / warmup)

    def _step(self, batch, stage: str, log: bool = True, write: bool = False) -> Tensor:
        x = batch[0]
        terms = self.vae(x)
        beta = self.current_beta() if stage == "train" else self.hparams.beta
        loss = -terms.elbo(beta).mean()
        train = stage == "train"  # train: per step; val/test: epoch means, synced over ranks
        if train:  # a NaN/inf never reaches the weights (see vaelab.guards)
            parts = {"recon": terms.recon, "kl": terms.kl}
            self._deferred.watch(loss, parts) if self._deferred else check_finite_loss(loss, parts, self)
        if not log:
            return loss
        metrics = {
            f"{stage}/elbo": terms.elbo().mean(),
            f"{stage}/recon": terms.recon.mean(),
            f"{stage}/kl": terms.kl.mean(),
        }
        opts = dict(on_step=train, on_epoch=not train, sync_dist=not train, batch_size=x.shape[0])
        self.log(f"{stage}/loss", loss, prog_bar=True, **opts)
        self.log_dict(metrics, **opts)
        if train:
            metrics[f"{stage}/loss"] = loss
            if self.hparams.learn_sigma:
                metrics["train/sigma"] = self.vae.likelihood.sigma
                self.log("train/sigma", metrics["train/sigma"], on_step=True, batch_size=x.shape[0])
            if self.hparams.kl_warmup_steps > 0:
                metrics["train/beta"] = beta
                self.log("train/beta", beta, on_step=True, batch_size=x.shape[0])
            if write:
                self._write_train_point(metrics)
        return loss

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
        loss = self._step(batch, "train", log=self._logging_step, write=write)
        if not self.automatic_optimization:
            optimizer = self.optimizers()
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            optimizer.step()
        return loss

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

    def configure_optimizers(self):
        trainer, hp = self.trainer, self.hparams
        fused = fused_allowed(trainer.precision, clipping=(trainer.gradient_clip_val or 0) > 0)
        return Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, fused=fused)

    # -- the non-finite check on an accelerator (vaelab.guards) ----------------------------
    def _defers_loss_check(self) -> bool:
        """A host sync per step is free on the CPU and a stall on an accelerator; under DDP
        (CPU too) the deferred check also makes all ranks skip and stop together, where a rank
        stopping alone before backward would leave the others waiting in its all-reduce.
        Deferring needs fused Adam (it skips a bad step on the device) and whole gradients on
        every rank (one device or DDP; FSDP and DeepSpeed shard them, so ranks would disagree)."""
        whole_gradients = type(self.trainer.strategy) in (SingleDeviceStrategy, DDPStrategy)
        fused = self.optimizers(use_pl_optimizer=False).fused
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

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        carry_step_count(checkpoint, manual=not self.automatic_optimization)


def needs_lightnings_loop(trainer: L.Trainer) -> bool:
    """Trainer options that only Lightning's automatic optimisation loop implements (gradient
    clipping, accumulation, an accumulation schedule) or that ``ModelCheckpoint`` in Lightning
    2.6 handles differently without it (``every_n_train_steps``, ``train_time_interval``).
    LR schedulers are not configured by vaelab; a subclass that adds one should use the loop too."""
    if (trainer.gradient_clip_val or 0) > 0 or trainer.accumulate_grad_batches != 1:
        return True
    if any(isinstance(cb, GradientAccumulationScheduler) for cb in trainer.callbacks):
        return True
    return any(
        getattr(cb, "_every_n_train_steps", 0) > 0 or getattr(cb, "_train_time_interval", None) is not None
        for cb in trainer.checkpoint_callbacks
    )
