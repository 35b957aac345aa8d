"""Lightning's TensorBoard logger, minus the ``epoch`` chart.

TensorBoard's Scalars tab lists tag groups alphabetically and opens the first ones: Lightning's
``epoch`` staircase (one point per logging step, no curve a researcher reads) came first and
pushed ``train/*`` and ``val/*`` down. Curves are plotted against steps, which are what every
other tag uses, so nothing is lost by leaving it out.
"""

from __future__ import annotations

from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger


class TensorBoardLogger(LightningTensorBoardLogger):
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)
