"""VAEModule: the LightningModule that trains a :class:`VAE` by maximising the (β-)ELBO.

The loss is the negative β-ELBO per example (nats, batch mean). Logged names:
``train/loss``, ``train/elbo``, ``train/recon``, ``train/kl`` (+ ``train/sigma`` for a
learned decoder σ, ``train/beta`` during KL warm-up) and the same under ``val/`` and
``test/``, synchronised across DDP ranks at epoch end.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from vaelab.guards import check_finite_loss
from vaelab.nets.conv import use_channels_last
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

    def current_beta(self) -> float:
        """β, ramped linearly from 0 over ``kl_warmup_steps`` (against posterior collapse)."""
        warmup = self.hparams.kl_warmup_steps
        if warmup <= 0:
            return self.hparams.beta
        return self.hparams.beta * min(1.0, self.global_step / warmup)

    def _step(self, batch, stage: str, log: bool = True) -> Tensor:
        x = batch[0]
        terms = self.vae(x)
        beta = self.current_beta() if stage == "train" else self.hparams.beta
        loss = -terms.elbo(beta).mean()
        train = stage == "train"  # train: per step; val/test: epoch means, synced over ranks
        if train:  # a NaN/inf stops the run here, before it reaches the weights
            check_finite_loss(loss, {"recon": terms.recon, "kl": terms.kl}, self)
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
        if stage == "train" and self.hparams.learn_sigma:
            self.log("train/sigma", self.vae.likelihood.sigma, on_step=True, batch_size=x.shape[0])
        if stage == "train" and self.hparams.kl_warmup_steps > 0:
            self.log("train/beta", beta, on_step=True, batch_size=x.shape[0])
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train", log=self._logs_step(batch_idx))

    def _logs_step(self, batch_idx: int) -> bool:
        """Whether Lightning writes this step's metrics: its own logging rule (every
        ``log_every_n_steps`` and when stopping), the first step, or the epoch's last step.

        ``self.log`` costs about a millisecond of host time per call, as much as a whole step
        of a small VAE, so the train metrics are logged only on the steps that write them (the
        progress bar's loss updates at the same rate).
        """
        trainer = self.trainer
        return (
            trainer._logger_connector.should_update_logs
            or self.global_step == 0
            or batch_idx + 1 >= trainer.num_training_batches
        )

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
