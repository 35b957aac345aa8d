"""Which folder a resumed run writes to: the folder of the run it resumes.

Hydra picks the run folder before any vaelab code runs, so the entry point asks
:func:`run_dir_override` first and passes ``hydra.run.dir=<that run>`` along. Kept free of
torch and Lightning imports, so ``--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

from vaelab.errors import UserError

LAST = "last.ckpt"


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
    return run if ckpt.parent.name == "checkpoints" and (run / ".hydra").is_dir() else None


def _override_values(args: list[str]) -> dict[str, str]:
    pairs = (a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    return {key.lstrip("+~"): value for key, value in pairs}


def _log_dir(args: list[str], conf_dir: Path, config_name: str) -> Path:
    from hydra import compose, initialize_config_dir

    overrides = [a for a in args if "=" in a and not a.startswith(("-", "hydra.", "hydra/"))]
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    return Path(cfg.paths.log_dir)


def run_dir_override(args: list[str], conf_dir: Path, config_name: str = "train") -> list[str]:
    """``["hydra.run.dir=<run>"]`` when the command line resumes a checkpoint of a run folder,
    so the resumed run continues in that folder; ``[]`` when Hydra should pick a new one."""
    values = _override_values(args)
    ckpt = values.get("ckpt_path")
    multirun = any(a in ("-m", "--multirun") for a in args)
    if ckpt in (None, "null") or "hydra.run.dir" in values or multirun:
        return []
    if ckpt == "last":
        try:
            log_dir = _log_dir(args, conf_dir, config_name)
        except Exception:  # a bad override: Hydra reports it properly in a moment
            return []
        ckpt = newest_last_checkpoint(log_dir)
    run = run_dir_of(Path(ckpt))
    if run is None:
        return []
    quoted = str(run).replace("\\", "\\\\").replace("'", "\\'")
    return [f"hydra.run.dir='{quoted}'"]
