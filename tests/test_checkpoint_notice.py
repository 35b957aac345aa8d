"""The periodic last.ckpt says what it saves: no Lightning notice lands in the progress bar."""

import lightning as L
import torch

from vaelab.resume import ResumeCheckpoints


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_periodic_checkpoints_raise_no_weights_only_notice(tmp_path, caplog):
    caplog.set_level("INFO", logger="lightning.pytorch")
    saver = ResumeCheckpoints(str(tmp_path / "checkpoints"), every_n_steps=1)
    trainer = L.Trainer(
        max_steps=3,
        callbacks=[saver],
        logger=False,
        enable_checkpointing=True,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Tiny(), train_dataloaders=torch.utils.data.DataLoader(torch.randn(8, 2), batch_size=2))
    saved = torch.load(saver.last_path, weights_only=False)
    assert saved["global_step"] == 3 and "optimizer_states" in saved  # a full, resumable checkpoint
    assert "weights_only" not in caplog.text
