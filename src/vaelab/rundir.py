"""Resuming a run: its own folder, its own config, its record kept.

Hydra picks the run folder and composes the config before any vaelab code runs, so the entry
point asks :func:`resume_args` first. For ``ckpt_path=<run>/checkpoints/x.ckpt`` (or ``last``)
it returns the command line with the run's recorded overrides added (the newest record's
``overrides.yaml``; the command line's own overrides win for the same key), ``hydra.run.dir``
pointing at the run, and ``hydra.output_subdir=.hydra/resume-<n>``: Hydra writes this attempt's
record there instead of over the run's ``.hydra/config.yaml``. Inside the job,
:func:`config_drift` names keys that still differ from the record (conf/ changed since), and
:func:`discard_failed_attempt` removes what a command that failed before training left: a new
folder holding only ``.hydra/`` and logs, or a resume's own record. Kept free of torch and
Lightning imports, so ``--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from omegaconf import DictConfig, OmegaConf

from vaelab.errors import UserError

log = logging.getLogger(__name__)

LAST = "last.ckpt"
RECORD = ".hydra"  # Hydra's default output_subdir: the run's first record
RESUME = "resume-"  # each resume's record: .hydra/resume-1, .hydra/resume-2, ...
# set, and not 0, in every process but a run's first: torchrun, srun, Lightning's own ranks, and
# a node started by hand (NODE_RANK=1) before Lightning has set RANK for it
_RANK_VARS = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_NODEID")
# run folders named on the command line that existed before Hydra ran: a failed start never removes them
EXISTING: set[Path] = set()


# -- which checkpoint, which run -----------------------------------------------------------------
def newest_last_checkpoint(log_dir: Path) -> Path:
    found = [p for p in log_dir.rglob(f"checkpoints/{LAST}") if p.is_file()] if log_dir.is_dir() else []
    if not found:
        raise UserError(
            f"ckpt_path=last: no run under {log_dir} has checkpoints/{LAST} to resume. Pass the "
            "checkpoint's path instead (ckpt_path=<run>/checkpoints/last.ckpt)."
        )
    return max(found, key=lambda p: p.stat().st_mtime_ns)


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint was written in: <run>/checkpoints/x.ckpt with <run>/.hydra."""
    ckpt = Path(checkpoint).resolve()
    run = ckpt.parent.parent
    return run if ckpt.parent.name == "checkpoints" and (run / RECORD).is_dir() else None


def records(run: Path) -> list[Path]:
    """The run's records, oldest first: ``.hydra`` then ``.hydra/resume-1``, ``-2``, ..."""
    resumes = [p for p in (run / RECORD).glob(f"{RESUME}*") if p.name[len(RESUME) :].isdigit()]
    ordered = [run / RECORD, *sorted(resumes, key=lambda p: int(p.name[len(RESUME) :]))]
    return [p for p in ordered if (p / "config.yaml").is_file() and (p / "overrides.yaml").is_file()]


def next_record(run: Path) -> str:
    """``hydra.output_subdir`` for the next resume of ``run``: one past the highest number."""
    numbers = [int(p.name[len(RESUME) :]) for p in records(run)[1:]]
    return f"{RECORD}/{RESUME}{max(numbers, default=0) + 1}"


def hydra_quote(value: str) -> str:
    """``value`` as one Hydra override value: quoted, so spaces, commas and ``=`` stay literal."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def resume_command(checkpoint: Path) -> str:
    """The shell command that resumes ``checkpoint`` from this working directory, to copy as is:
    this interpreter unless it is the ``python`` on PATH, this script, the path quoted if need be."""
    value = str(checkpoint)
    if not re.fullmatch(r"[\w./-]+", value):  # anything Hydra's grammar or the shell would read
        value = hydra_quote(value)
    python = "python" if shutil.which("python") == sys.executable else sys.executable
    return shlex.join([python, sys.argv[0], f"ckpt_path={value}"])


# -- the command line of a resume ----------------------------------------------------------------
def _parse(args: list[str]) -> list | None:
    """Hydra's parse of each override (flags and their values skipped); None if one is invalid:
    Hydra reports that itself, properly, in a moment."""
    try:
        return [OverridesParser.create().parse_override(a) for a in args]
    except Exception:
        return None


def _is_override(arg: str) -> bool:
    return not arg.startswith("-") and ("=" in arg or arg.startswith("~"))


def _log_dir(overrides: list[str], conf_dir: Path, config_name: str) -> Path:
    from hydra import compose, initialize_config_dir

    plain = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=plain)
    return Path(cfg.paths.log_dir)


def _resumed_run(values: dict, overrides: list[str], conf_dir: Path, config_name: str) -> Path | None:
    ckpt, run_dir = values.get("ckpt_path"), values.get("hydra.run.dir")
    if ckpt != "last":
        return run_dir_of(Path(str(ckpt)))
    if run_dir is not None:  # ckpt_path=last in a named folder: that folder's last.ckpt
        return Path(str(run_dir)).resolve()
    try:
        log_dir = _log_dir(overrides, conf_dir, config_name)
    except Exception:  # a bad override: Hydra reports it properly in a moment
        return None
    return run_dir_of(newest_last_checkpoint(log_dir))


def _recorded(run: Path) -> list:
    """The newest record's overrides (parsed), less ckpt_path and Hydra's own."""
    found = records(run)
    lines = [str(line) for line in OmegaConf.load(found[-1] / "overrides.yaml")] if found else []
    skip = ("ckpt_path", "hydra.", "hydra/")
    parsed = _parse(lines)
    if parsed is None:
        log.warning(
            "cannot parse the overrides recorded in %s; resuming with this command's overrides only",
            found[-1] / "overrides.yaml",
        )
    return [o for o in parsed or [] if not o.key_or_group.startswith(skip)]


def first_process() -> bool:
    """Whether this is the run's first process (global rank 0), from the environment alone, so
    it can be asked before Hydra or Lightning has run."""
    return all(os.environ.get(v, "0") in ("", "0") for v in _RANK_VARS)


def resume_args(args: list[str], conf_dir: Path, config_name: str = "train") -> list[str]:
    """``args`` as Hydra should see them: unchanged unless they resume a checkpoint of a run
    folder; then with the run's recorded overrides, its folder and a new record for this attempt
    (see the module docstring). Idempotent, as DDP ranks re-run the completed command line."""
    if any(a in ("-m", "--multirun") for a in args):
        return args
    at = [i for i, a in enumerate(args) if _is_override(a)]
    parsed = _parse([args[i] for i in at])
    if not at or parsed is None:
        return args
    values = {o.key_or_group: o.value() for o in parsed if not o.is_delete()}
    if values.get("hydra.run.dir") is not None and Path(str(values["hydra.run.dir"])).exists():
        EXISTING.add(Path(str(values["hydra.run.dir"])).resolve())
    if values.get("ckpt_path") is None:
        return args
    run = _resumed_run(values, [args[i] for i in at], conf_dir, config_name)
    if run is None:
        return args
    mine = {o.key_or_group: o for o in parsed}
    recorded = _recorded(run)
    added = [o.input_line for o in recorded if o.key_or_group not in mine]
    for o in recorded:  # a key the run added (+key=...) is changed now: it must be added again
        if o.is_add() and o.key_or_group in mine and mine[o.key_or_group].type == OverrideType.CHANGE:
            i = at[parsed.index(mine[o.key_or_group])]
            args = [*args[:i], "+" + args[i], *args[i + 1 :]]
    target = Path(str(values.get("hydra.run.dir", run)))
    if "hydra.run.dir" not in values:
        added.append(f"hydra.run.dir={hydra_quote(run)}")
    if "hydra.output_subdir" not in values:
        if not first_process():
            added.append("hydra.output_subdir=null")  # the record is the first process's to write
        elif (target / RECORD / "config.yaml").is_file():
            added.append(f"hydra.output_subdir={next_record(target)}")
    # overrides are one contiguous block of the command line (Hydra's parser insists): grow it
    return [*args[: at[0]], *added, *args[at[0] : at[-1] + 1], *args[at[-1] + 1 :]]


# -- inside the job --------------------------------------------------------------------------------
def _leaves(node, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _record_of(cfg: DictConfig, output_dir: Path, own_record: Path | None) -> Path | None:
    """The newest record, before this attempt's own, of the run whose checkpoint ``cfg`` resumes."""
    value = cfg.get("ckpt_path")
    if value is None:
        return None
    run = output_dir if value == "last" else run_dir_of(Path(str(value)))
    found = [r for r in records(run) if r != own_record] if run is not None else []
    return found[-1] if found else None


def config_drift(
    cfg: DictConfig, output_dir: Path, own_record: Path | None, overrides: list[str]
) -> str | None:
    """A warning naming the keys in which a resumed run's config differs from its newest record
    and that this attempt did not set itself (its ``overrides`` that the record lacks), or None."""
    record = _record_of(cfg, Path(output_dir), own_record)
    if record is None:
        return None
    old = {str(line) for line in OmegaConf.load(record / "overrides.yaml")}
    mine = {o.key_or_group for o in _parse([o for o in overrides if o not in old]) or []}
    before = _leaves(OmegaConf.to_container(OmegaConf.load(record / "config.yaml"), resolve=False))
    now = _leaves(OmegaConf.to_container(cfg, resolve=False))
    absent = "<absent>"
    changed = [
        f"{key}: {before.get(key, absent)} -> {now.get(key, absent)}"
        for key in sorted(set(before) | set(now))
        if before.get(key, absent) != now.get(key, absent)
        and not any(key == k or key.startswith(k + ".") for k in mine)
    ]
    if not changed:
        return None
    return (
        f"this resume's config differs from the run's record {record / 'config.yaml'} in keys the "
        f"command line does not set (conf/ changed since?): {'; '.join(changed)}. Set key=<recorded "
        "value> to keep the run's value."
    )


def _products(run: Path) -> dict[Path, int]:
    """What a run produced: every file but the records and the logs, with its mtime."""
    if not run.is_dir():
        return {}
    files = (p for p in run.rglob("*") if p.is_file() and p.suffix != ".log")
    return {p: p.stat().st_mtime_ns for p in files if RECORD not in p.relative_to(run).parts}


def _remove_run(output_dir: Path, log_dir: Path | None) -> None:
    """Remove ``output_dir``, and the folders above it that this leaves empty (say the date of
    ``outputs/<date>/<time>``), up to but not including ``log_dir``."""
    shutil.rmtree(output_dir, ignore_errors=True)
    if log_dir is None:
        return
    log_dir, parent = Path(log_dir).resolve(), output_dir.resolve().parent
    with contextlib.suppress(OSError):  # another run may be making its folder there right now
        while parent != log_dir and log_dir in parent.parents and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


@contextlib.contextmanager
def discard_failed_attempt(
    output_dir: Path, own_record: Path | None, log_dir: Path | None = None
) -> Iterator[None]:
    """If the block fails before writing anything into ``output_dir`` (no checkpoint, no event
    file, no figure: only records and logs changed), remove what this attempt added: a folder it
    made, or, in a run that already existed, only its own record. ``own_record``: where Hydra
    wrote this attempt's record (None: another process writes it, so this one removes nothing)."""
    output_dir = Path(output_dir)
    before = _products(output_dir)
    try:
        yield
    except BaseException:
        if own_record is not None and _products(output_dir) == before:
            if own_record == output_dir / RECORD and not before and output_dir.resolve() not in EXISTING:
                _remove_run(output_dir, log_dir)
            elif own_record != output_dir / RECORD:
                shutil.rmtree(own_record, ignore_errors=True)
        raise


@contextlib.contextmanager
def attempt(cfg: DictConfig) -> Iterator[None]:
    """The Hydra job around training: warns of :func:`config_drift` and, in a single run,
    cleans up after a failure with :func:`discard_failed_attempt`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    output_dir = Path(hc.runtime.output_dir)
    own = output_dir / hc.output_subdir if hc.output_subdir is not None else None
    if own is not None:
        drift = config_drift(cfg, output_dir, own, list(hc.overrides.task))
        if drift:
            log.warning(drift)
    if hc.mode == RunMode.MULTIRUN:  # the sweep owns its folders: leave them as they are
        yield
        return
    with discard_failed_attempt(output_dir, own, cfg.get("paths", {}).get("log_dir")):
        yield
