"""A run's hyper-parameters and final metrics in TensorBoard's HPARAMS view.

``tensorboard --logdir outputs/multirun/<sweep>`` then compares the jobs side by side. The
final metrics go in under ``final/<name>`` (one point each) rather than as extra points of
the ``val/…`` curves, which the logger's ``log_hyperparams`` would otherwise append at step 0.
"""

from __future__ import annotations

from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

# config groups whose values describe the experiment (paths, callbacks, logger do not)
GROUPS = ("model", "dataset", "trainer")
# leaves that are folders or plumbing, not hyper-parameters
SKIPPED = ("root", "cache_dir", "default_root_dir")


def hyperparameters(cfg: DictConfig) -> dict:
    """The run's top-level scalars and its model/dataset/trainer settings, nested by group."""
    out = {k: v for k, v in cfg.items() if not OmegaConf.is_config(v) and k not in ("ckpt_path", "task_name")}
    for group in GROUPS:
        values = OmegaConf.to_container(cfg[group], resolve=True) if group in cfg else {}
        out[group] = {k: v for k, v in values.items() if not k.startswith("_") and k not in SKIPPED}
    return out


def log_final_hparams(trainer, cfg: DictConfig, metrics: dict[str, float | None]) -> None:
    """Log hyper-parameters (with the final metrics where the logger takes them) on rank 0."""
    final = {f"final/{k}": v for k, v in metrics.items() if v is not None}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hyperparameters(cfg), metrics=final)
        else:
            logger.log_hyperparams(hyperparameters(cfg))
        logger.finalize("success")  # the trainer already closed its writers: flush these lines too
