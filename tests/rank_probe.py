"""Test-only callbacks for DDP runs (imported by the training subprocess via PYTHONPATH).

Each rank saves its RNG state right before each of its validation batches, and the batch as the
model gets it (dequantised), so a test can replay that rank's exact reparameterisation noise and
recompute val/loss on its own.
"""

from pathlib import Path

import lightning as L
import torch


class ValRngProbe(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {"rng": torch.get_rng_state(), "n": len(batch[0]), "epoch": trainer.current_epoch}
        state["x"] = batch[0].detach().cpu()
        torch.save(state, self.out_dir / f"rank{trainer.global_rank}_batch{batch_idx}.pt")


class NanBatchOnRank(L.Callback):
    """Fills one training batch with NaN on one rank only: the other rank's loss stays finite."""

    def __init__(self, rank: int, step: int):
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            batch[0].fill_(float("nan"))
