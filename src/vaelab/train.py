"""Build a training run from a composed config and run it; no Hydra decorators here,
so tests (and notebooks) call :func:`run` with a config from ``hydra.compose``."""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from vaelab.callbacks import SampleQuality
from vaelab.checkpoints import SafeCheckpointIO
from vaelab.config import config_tree, validate
from vaelab.distributed import check_run_dir, launch_scope, scale_summary
from vaelab.hparams import log_final_hparams
from vaelab.numbers import significant
from vaelab.resume import checkpoint_to_resume
from vaelab.rundir import first_process

log = logging.getLogger(__name__)

# Lightning ≤ 2.6 builds torch's deprecated LeafSpec on newer torch: noise on every run, nothing to act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def _route_lightning_logs_to_root() -> None:
    """Lightning adds its own stderr handler; under Hydra's logging that prints every line twice."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True


def _show_config(cfg: DictConfig) -> None:
    """The config tree, once: on the first process, and in a sweep for its first job only (the
    others differ by their overrides, which the job's first log line names)."""
    if not cfg.get("print_config", True) or not (first_process() and rank_zero_only.rank == 0):
        return
    hc = HydraConfig.get() if HydraConfig.initialized() else None
    if hc is not None and hc.mode == RunMode.MULTIRUN and hc.job.num > 0:
        log.info("job %d: %s (config as job 0's otherwise)", hc.job.num, " ".join(hc.overrides.task))
        return
    print(config_tree(cfg), flush=True)


def build(cfg: DictConfig):
    """(datamodule, model, trainer) as the config describes them."""
    datamodule = instantiate(cfg.dataset)
    datamodule.check()  # a missing dataset fails here, with its message, before any setup
    model = instantiate(cfg.model, image_shape=datamodule.image_shape, n_conditions=datamodule.n_conditions)
    if datamodule.dequantize and model.vae.likelihood.data != "continuous":
        datamodule.dequantize = False  # a probability mass scores the 8-bit (or binary) values as they are
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    # checkpoints written atomically (temp file + rename) and loaded with weights_only=True
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, plugins=[SafeCheckpointIO()])
    return datamodule, model, trainer


def _finite_floats(metrics) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        v = float(value)
        out[key] = v if math.isfinite(v) else None
    return out


def run(cfg: DictConfig) -> dict[str, float | str]:
    """Fit (and test) the configured VAE; write ``metrics.json`` into the run dir and return it."""
    validate(cfg)
    _route_lightning_logs_to_root()
    _show_config(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, model, trainer = build(cfg)
    check_run_dir(trainer)
    if trainer.is_global_zero:
        log.info(scale_summary(trainer, datamodule.batch_size, model.hparams.optimizer.get("lr")))
    with launch_scope(trainer):
        metrics = _fit_and_test(cfg, datamodule, model, trainer)
    numbers = dict(metrics)
    metrics["scored_data"] = datamodule.scored_data()  # what val/* and test/* measured
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir) / "metrics.json"
        out.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        log.info(
            "metrics (val and test on %s): %s",
            metrics["scored_data"],
            ", ".join(f"{k}={significant(v)}" for k, v in sorted(numbers.items()) if v is not None),
        )
        log_final_hparams(trainer, cfg, numbers)
    return metrics


def _fit_and_test(cfg: DictConfig, datamodule, model, trainer) -> dict[str, float]:
    resume = checkpoint_to_resume(cfg, model)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume)  # SafeCheckpointIO loads it
    fit_seconds = time.perf_counter() - start
    metrics = _finite_floats(trainer.callback_metrics)
    # this process's fitting time (a resumed run: since the resume) less the time it stood still
    # for the sample-quality judge, which gets its own line, and where training ended
    quality = [c for c in trainer.callbacks if isinstance(c, SampleQuality)]
    fit_seconds -= sum(c.waited_seconds for c in quality)
    metrics.update(fit_seconds=round(fit_seconds, 1), epochs=trainer.current_epoch)
    judge = [c.judge_seconds for c in quality if c.judge_seconds is not None]
    if judge:  # loading it, or training it the first time (rank 0's only)
        metrics["judge_seconds"] = round(sum(judge), 1)
    if cfg.get("test"):
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")  # "" without ModelCheckpoint
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update(_finite_floats(trainer.callback_metrics))
    return metrics


def sweep_objective(metrics: dict[str, float | None]) -> float:
    """What a hyper-parameter search minimises: the validation negative ELBO at β = 1.

    Not ``val/loss``: with β among the searched parameters, the β-weighted loss rewards small β
    rather than a better model. A diverged run scores +inf, so it loses instead of aborting the study.
    """
    elbo = metrics.get("val/elbo")
    return -elbo if elbo is not None and math.isfinite(elbo) else math.inf
