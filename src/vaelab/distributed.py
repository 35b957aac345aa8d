"""Distributed runs under Hydra, made boring: one run dir, one sweep, one line about scale.

Lightning's DDP launcher starts ranks 1..N-1 of a node by re-running the command line. Under a
Hydra multirun that line holds ``-m`` and every sweep value, so each child would start a sweep
of its own in a fresh folder; :func:`job_command` re-runs only the current job, in its folder.
The launcher also leaves ``LOCAL_RANK``, ``MASTER_PORT`` … in ``os.environ`` and the process
group open, which would make the next job of a sweep skip starting its ranks and hang:
:func:`launch_scope` puts both back. Processes started separately (several nodes, torchrun,
SLURM) each run Hydra on their own, so :func:`check_run_dir` insists they share a named run dir.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

import lightning.pytorch.strategies.launchers.subprocess_script as lightning_launcher
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from vaelab.errors import UserError
from vaelab.swept import override_key

# what Lightning's launcher writes into os.environ (and torch.set_num_threads) for its children
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS")
# hydra overrides that belong to the sweep or to the parent's folder, not to one rank of one job
_NOT_FOR_CHILDREN = ("hydra.mode", "hydra.run", "hydra.sweep", "hydra/sweeper", "hydra.sweeper")
_NOT_FOR_CHILDREN += ("hydra/launcher", "hydra.launcher", "hydra.job.name", "hydra.output_subdir")


def _script() -> list[str]:
    import __main__  # as Lightning does: `python -m pkg` and `python path/script.py` both work

    if __main__.__spec__ is None:
        from hydra.utils import to_absolute_path

        return [sys.executable, to_absolute_path(sys.argv[0])]
    return [sys.executable, "-m", __main__.__spec__.name]


def _config_flags(hc) -> list[str]:
    flags = [f"--config-name={hc.job.config_name}"]
    for source in hc.runtime.config_sources:
        if source.schema == "file" and source.provider == "main":
            flags.append(f"--config-path={source.path}")
        elif source.provider == "command-line":
            flags.append(f"--config-dir={source.path}")
    return flags


def job_command(local_rank: int) -> tuple[list[str], str]:
    """Command and cwd for local rank ``local_rank`` of the current Hydra job (never a sweep).

    Replaces Lightning's ``_hydra_subprocess_cmd``, which copies ``sys.argv`` (``-m`` and all
    sweep values included) and points the child at ``hydra.run.dir`` even inside a multirun.
    """
    from hydra.utils import get_original_cwd

    hc = HydraConfig.get()
    hydra_overrides = [o for o in hc.overrides.hydra if not override_key(o).startswith(_NOT_FOR_CHILDREN)]
    node = os.environ.get("NODE_RANK", "0")
    command = [
        *_script(),
        *_config_flags(hc),
        *hc.overrides.task,
        *hydra_overrides,
        f'hydra.run.dir="{hc.runtime.output_dir}"',
        f"hydra.job.name={hc.job.name}_node{node}_local{local_rank}",
        "hydra.output_subdir=null",  # .hydra/ is the launching rank's to write
        "hydra.mode=RUN",  # a search config (e.g. +hparams_search=optuna) sets MULTIRUN: not here
    ]
    return command, get_original_cwd()


@contextlib.contextmanager
def launch_scope(trainer) -> Iterator[None]:
    """Fit/test inside this: children get :func:`job_command`; afterwards the process is as before.

    On exit it waits for the children it started, closes the process group and restores the
    launcher's environment variables and thread count, so a following sweep job launches anew.
    """
    saved_env = {k: os.environ.get(k) for k in LAUNCHER_ENV}
    saved_threads = torch.get_num_threads()
    original = lightning_launcher._hydra_subprocess_cmd
    lightning_launcher._hydra_subprocess_cmd = job_command
    try:
        yield
    except BaseException:
        # a child stuck in a collective would otherwise block until the process-group timeout
        kill = getattr(trainer.strategy.launcher, "kill", None)
        if callable(kill):
            kill(signal.SIGKILL)
        raise
    finally:
        lightning_launcher._hydra_subprocess_cmd = original
        for proc in getattr(trainer.strategy.launcher, "procs", []):
            proc.wait()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.set_num_threads(saved_threads)


def check_run_dir(trainer) -> None:
    """Refuse a timestamped run dir when this run's processes are started separately.

    Several nodes, torchrun and SLURM start every rank's process on its own; each runs Hydra
    and would resolve ``${now:…}`` to its own folder, scattering one run over several dirs.
    """
    if trainer.world_size == 1 or not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    if hc.mode != RunMode.RUN:
        return  # a sweep job's folder is <sweep dir>/<job number>, the same for all its ranks
    separate = trainer.num_nodes > 1 or trainer.strategy.cluster_environment.creates_processes_externally
    run_dir = OmegaConf.to_container(hc.run)["dir"]
    if separate and "${now:" in run_dir:
        raise UserError(
            f"This run's {trainer.world_size} processes are started separately (num_nodes="
            f"{trainer.num_nodes}, or by torchrun/SLURM), and each runs Hydra on its own, so "
            f"hydra.run.dir={run_dir} would give each process its own timestamped folder. Pass the "
            "same folder to every process, e.g. hydra.run.dir=outputs/mnist-2nodes "
            "(under SLURM: hydra.run.dir=outputs/slurm-$SLURM_JOB_ID)."
        )


def scale_summary(trainer, batch_size: int, lr: float | None) -> str:
    """One line: processes, effective batch size and the learning-rate rule (lr is never scaled).

    The rule: every process keeps the configured batch, so the effective batch grows with the
    number of processes while ``optimizer.lr`` stays as configured; the linearly scaled lr is
    shown for whoever wants to apply it by hand. ``lr`` is the optimiser spec's ``lr``
    (``model.hparams.optimizer["lr"]``), None for an optimiser configured without one.
    """
    world, accumulate = trainer.world_size, trainer.accumulate_grad_batches
    effective = batch_size * world * accumulate
    rule = (
        f"lr {lr:g} as configured (rule: per-process batch kept, lr not scaled; "
        f"the linear-scaling rule would be optimizer.lr={lr * world * accumulate:g})"
        if lr is not None
        else "the optimiser's lr as configured (rule: per-process batch kept, lr not scaled)"
    )
    return (
        f"scale: {world} process(es) = {trainer.num_nodes} node(s) x {trainer.num_devices} device(s); "
        f"effective batch size {effective} = {batch_size} per process x {world} x {accumulate} "
        f"accumulated; {rule}"
    )
