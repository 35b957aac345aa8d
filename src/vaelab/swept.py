"""Which keys a multirun sweeps: they name its job folders and lead TensorBoard's HPARAMS view.

A job's own overrides mix the swept values (``latent_dim=2``) with settings shared by every
job (``trainer.max_epochs=1``, data folders); only the multirun's command line
(``latent_dim=2,16``) and a search's parameters (``hydra.sweeper.params``, Optuna's) say which
is which. :class:`SweptKeys`, a Hydra callback, reads them when the multirun starts and passes
them to the jobs in the environment, which local launchers, Lightning's DDP processes and SLURM
jobs inherit. A job that cannot see them counts every override but the folders as swept, and
one of a multirun that sweeps nothing (``-m latent_dim=2``) is named by its number alone.
"""

from __future__ import annotations

import os
import re

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

ENV = "VAELAB_SWEPT_KEYS"
# never swept keys, only places: left out of folder names and swept keys alike
NOT_SWEPT = ("paths", "ckpt_path", "trainer.default_root_dir")
NAME_LIMIT = 96  # characters of overrides in a folder name (file names stop at 255 bytes)


class SweptKeys(Callback):
    """Hydra callback (conf/hydra/default.yaml): put the swept keys in ``$VAELAB_SWEPT_KEYS``."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        keys = [o.key_or_group for o in parsed if o.is_sweep_override()]
        keys += list(config.hydra.sweeper.get("params") or {})
        os.environ[ENV] = ",".join(dict.fromkeys(keys))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        os.environ.pop(ENV, None)


def override_key(override: str) -> str:
    """The key an override sets: ``latent_dim`` for ``+latent_dim=2``, ``~x`` and ``x=1``."""
    return override.partition("=")[0].lstrip("+~")


def swept_overrides(task: list[str]) -> list[str]:
    """The swept ones of a job's overrides (``hydra.overrides.task``), in their order."""
    if ENV in os.environ:  # set, perhaps empty: `-m latent_dim=2` sweeps nothing
        known = set(os.environ[ENV].split(","))
        return [o for o in task if override_key(o) in known]
    return [o for o in task if not override_key(o).startswith(NOT_SWEPT)]


def job_dirname(num: int, task: list[str]) -> str:
    """A sweep job's folder: its number and swept overrides, ``3_latent_dim-2+model-conv``.

    ``=`` and ``,`` would make ``ckpt_path=<job>/checkpoints/last.ckpt`` fail to parse unless
    quoted, so keys and values are joined by ``-`` and ``+``, and any other character a Hydra
    value or a file name cannot hold unquoted (brackets, spaces, ``/``) becomes ``_``.
    """
    items = (o.lstrip("+~").replace("=", "-", 1) for o in swept_overrides(list(task)))
    name = re.sub(r"[^\w.+@%-]", "_", "+".join(items))[:NAME_LIMIT]
    return f"{num}_{name}" if name else str(num)
