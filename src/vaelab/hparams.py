"""A run's hyper-parameters and final metrics in TensorBoard's HPARAMS view.

How TensorBoard 2.x lays that view out (``tensorboard/plugins/hparams/backend_context.py``
and the dashboard): it takes the column list from a run's ``experiment`` summary, sorts the
hyper-parameters by (``differs`` first, then name), and ticks only the first five of them and
the first five metrics. A metric is not a value stored with the hyper-parameters but a scalar
tag: its cell shows the last point of that tag in the run. So each run writes:

- the swept keys (:mod:`vaelab.swept`, as in the job's folder name) marked ``differs`` so
  they lead, then a short list of the settings that matter (:data:`KEY_HPARAMS`), not every
  leaf of the config;
- metrics that point at the existing curve tags (``val/elbo``, ``val/loss``, …), the ELBO
  first, written without adding a point to any curve;
- the test metrics as values after the hyper-parameters (they are not curves: the module does
  not chart them), and the trial named by its own folder (:func:`trial_name`), since the
  view cuts names after a dozen characters and every run of a day starts with the same date.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from vaelab.swept import override_key
from vaelab.swept import swept_overrides as swept_items

# the settings shown after the swept keys: column name -> config path. A part's group (net,
# likelihood, prior, objective) shows as its option (conv, gaussian_learned, …), see _part_name.
KEY_HPARAMS = {
    "latent_dim": "latent_dim",
    "net": "net",
    "likelihood": "likelihood",
    "lr": "optimizer.lr",
    "beta": "objective.beta",
    "prior": "prior",
    "objective": "objective",
    "dataset": "dataset._target_",
    "batch_size": "dataset.batch_size",
    "max_epochs": "trainer.max_epochs",
    "seed": "seed",
}
PART_GROUPS = ("net", "likelihood", "prior", "objective")
# metric columns of the HPARAMS view read the last point of these curves (train/* is one noisy
# step); the test metrics are not curves: they are written as values, after the hyper-parameters
CURVES = ("val/",)
ONE_POINT = "test/"


def swept_overrides() -> dict[str, str]:
    """A multirun job's swept overrides as {key: value} (:mod:`vaelab.swept`); {} otherwise."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    swept = swept_items(list(HydraConfig.get().overrides.task))
    return {override_key(o): o.partition("=")[2] for o in swept}


def _scalar(cfg: DictConfig, path: str, text: str | None = None) -> object:
    """The config value at ``path`` if it is a scalar (numbers stay numbers), else ``text``."""
    value = OmegaConf.select(cfg, path, default=None)
    if isinstance(value, bool | int | float | str):
        return value
    return text if text is not None else str(value)


def _dataset_name(cfg: DictConfig) -> str:
    """The dataset option (mnist, celeba, …): Hydra's choice, else the datamodule's class."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("dataset")
        if choice:
            return choice
    target = str(OmegaConf.select(cfg, "dataset._target_", default=""))
    return target.rsplit(".", 1)[-1].removesuffix("DataModule").lower()


def _part_name(cfg: DictConfig, group: str) -> str | None:
    """A part's short name: the group option Hydra chose (``conv``, ``gaussian_learned``), else
    the class its ``_target_`` names (``Conv``); None when the config has no such part."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return choice
    target = OmegaConf.select(cfg, f"{group}._target_", default=None)
    return str(target).rsplit(".", 1)[-1] if target else None


def hyperparameters(cfg: DictConfig, swept: dict[str, str]) -> dict[str, object]:
    """The swept keys first, then :data:`KEY_HPARAMS` less those a swept key already names."""
    out = {key: _scalar(cfg, key, text) for key, text in swept.items()}
    for name, path in KEY_HPARAMS.items():
        if name in out or path in out:
            continue
        if name == "dataset":
            out[name] = _dataset_name(cfg)
        elif path in PART_GROUPS:
            out[name] = _part_name(cfg, path) or "None"
        else:
            out[name] = _scalar(cfg, path)
    return out


def metric_tags(metrics: dict[str, float | None]) -> list[str]:
    """Curve tags whose final value the view shows: the ELBO, then the rest sorted."""
    found = [k for k, v in metrics.items() if v is not None and k.startswith(CURVES)]
    return sorted(found, key=lambda k: (k.split("/")[1] != "elbo", k))


def one_point_columns(metrics: dict[str, float | None]) -> dict[str, float]:
    """The test metrics, one value each: columns of the view beside the hyper-parameters (a
    one-point chart would say nothing), the ELBO first."""
    found = {k: v for k, v in metrics.items() if v is not None and k.startswith(ONE_POINT)}
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != f"{ONE_POINT}elbo", kv[0])))


def _edit(summary, change) -> None:
    """Apply ``change`` to the HParams plugin data of one of torch's hparams summaries."""
    value = summary.value[0]
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    change(data)
    value.metadata.plugin_data.content = data.SerializeToString()


def _mark_differs(experiment, names: set[str]) -> None:
    """Flag the swept keys in the ``experiment`` summary: the view sorts them first."""

    def mark(data) -> None:
        for info in data.experiment.hparam_infos:
            info.differs = info.name in names

    _edit(experiment, mark)


def trial_name(run_dir: Path) -> str:
    """What the view's trial column shows for a run: its own part of the folder name first
    (a job's number and swept values, a run's time), which its first characters must tell
    apart, then the sweep's or the day's folder."""
    return f"{run_dir.name} ({run_dir.parent.name})"


def _name_trial(start, name: str) -> None:
    _edit(start, lambda data: setattr(data.session_start_info, "group_name", name))


def write_hparams(
    log_dir: str, params: dict[str, object], swept: set[str], tags: list[str], name: str = ""
) -> None:
    """Write the HPARAMS summaries into the run's TensorBoard folder, and no scalar point."""
    experiment, start, end = hparams_summaries(params, dict.fromkeys(tags, 0.0))
    _mark_differs(experiment, swept)
    if name:
        _name_trial(start, name)
    with SummaryWriter(log_dir=log_dir) as writer:  # a second event file of the same run
        for summary in (experiment, start, end):
            writer.file_writer.add_summary(summary)


def log_final_hparams(trainer, cfg: DictConfig, metrics: dict[str, float | None]) -> None:
    """Log the hyper-parameters with the final-metric columns, on rank 0 after the test."""
    swept, tests = swept_overrides(), one_point_columns(metrics)
    params = hyperparameters(cfg, swept) | tests
    # marked as differing (which they do between runs), the test values are ticked and shown
    # beside the swept keys instead of hidden after the first five hyper-parameters
    leading = set(swept) | set(tests)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            name = trial_name(Path(cfg.paths.output_dir))
            write_hparams(logger.log_dir, params, leading, metric_tags(metrics), name)
        else:
            logger.log_hyperparams(params)
            logger.finalize("success")  # the trainer already closed its writers: flush these too
