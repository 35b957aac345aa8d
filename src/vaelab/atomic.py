"""Writing a file so that readers see the old content or the new, never half of it.

Checkpoints and the data cache are both written here: to a temp file in the target's own
folder (same filesystem, so the rename is atomic), flushed to disk, then renamed over the
target. A process killed mid-write leaves the previous file intact plus a temp file, which
:func:`remove_stale_temps` cleans up later.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import torch

TEMP_SUFFIX = ".tmp"


def _temp_path(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.{pid}{TEMP_SUFFIX}")


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically. Any failure to write raises :class:`OSError`
    (torch reports a full disk as a RuntimeError from its zip writer)."""
    path = Path(path)
    tmp = _temp_path(path, os.getpid())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except RuntimeError as err:
        raise OSError(errno.EIO, f"writing failed ({err}); is the disk full?", str(path)) from err
    finally:
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete temp files that killed writers left in ``folder``; returns what was deleted."""
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        pid = tmp.name[: -len(TEMP_SUFFIX)].rsplit(".", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
