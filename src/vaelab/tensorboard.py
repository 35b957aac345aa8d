"""Lightning's TensorBoard logger, minus the charts that are no curves.

TensorBoard's Scalars tab lists tag groups alphabetically and opens the first ones: Lightning's
``epoch`` staircase (one point per logging step, no curve a researcher reads) and the test
metrics (one point each) came first and pushed ``train/*`` and ``val/*`` down. Curves are
plotted against steps, which every other tag uses; the test values are the HPARAMS table's
columns (:mod:`vaelab.hparams`) and stay in ``metrics.json`` and any other logger.
"""

from __future__ import annotations

from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger


class TensorBoardLogger(LightningTensorBoardLogger):
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        charts = {k: v for k, v in metrics.items() if k != "epoch" and not k.startswith("test/")}
        if charts:
            super().log_metrics(charts, step)
