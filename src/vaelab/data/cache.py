"""A disk cache of decoded splits, keyed on the source files and the preprocessing.

Decoding (gunzip + parse, or JPEG decode + crop + resize) happens once; later runs map
one uint8 tensor file into memory (``torch.load(mmap=True)``: pages are read as they are
used and shared by all processes on a node, so DDP ranks hold one copy, not one each).
The key hashes each source file's path, size and mtime with the
preprocessing parameters, so a changed source or setting builds a new entry instead of
serving stale data. Writes go to a temp file renamed into place, so a killed build never
leaves a half-written cache; an unreadable entry, or one without the expected tensors, is
rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor

from vaelab.atomic import atomic_torch_save

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def file_fingerprint(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    """(absolute path, size, mtime in ns) of each file: cheap, and changes when a file does."""
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append((str(Path(p).resolve()), st.st_size, st.st_mtime_ns))
    return out


def cache_key(**parts) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _load(path: Path, required: Iterable[str]) -> dict[str, Tensor] | None:
    """The entry at ``path``, or None (with a warning) when it is unreadable or incomplete."""
    try:
        _read_ahead(path)
        tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # corrupt or truncated: rebuilding is always safe
        log.warning("cache file %s is unreadable (%s); rebuilding it", path, type(err).__name__)
        return None
    ok = isinstance(tensors, dict) and all(isinstance(tensors.get(k), Tensor) for k in required)
    if not ok:
        log.warning("cache file %s lacks the expected tensors (stale or foreign); rebuilding it", path)
        return None
    return tensors


def _read_ahead(path: Path) -> None:
    """Ask the kernel to read the whole file into the page cache in the background: a mapped
    split is then read in one sequential sweep, not page by page in the random order of the
    first epoch's batches (which is slow on a cold cache or a network file system)."""
    if hasattr(os, "posix_fadvise"):
        with open(path, "rb") as f, contextlib.suppress(OSError):  # advice only: never a reason to rebuild
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)


def load_or_build(
    cache_dir: str | os.PathLike,
    name: str,
    key: str,
    build: Callable[[], dict[str, Tensor]],
    required: Iterable[str] = (),
) -> tuple[dict[str, Tensor], Path | None]:
    """The cached dict of tensors ``<cache_dir>/<name>-<key>.pt``, built by ``build`` if absent
    (or if it lacks one of the ``required`` tensors), and the file they are mapped from (None
    when they could not be cached and live in this process's memory only).

    After a build the freshly written file is mapped like any later run's, and the private
    tensors ``build`` made are dropped: otherwise the building process (DDP's rank 0) would
    train from its own copy while the other ranks map the file, two copies on one node.
    """
    path = Path(cache_dir) / f"{name}-{key}.pt"
    if path.is_file() and (tensors := _load(path, required)) is not None:
        return tensors, path
    log.info("no %s cache at %s yet: building it (once; later runs map it)", name, path)
    start = time.monotonic()
    tensors = build()
    try:
        atomic_torch_save(tensors, path)
    except OSError as err:  # read-only or full: train anyway, decode again next run
        log.warning(
            "cannot write the data cache %s (%s); continuing without it. Point "
            "paths.cache_dir at a writable folder to skip decoding next time.",
            path,
            err.strerror or err,
        )
        return tensors, None
    images = sum(len(t) for k, t in tensors.items() if k.endswith("images"))
    log.info(
        "cached %s: %s%.0f MB at %s, in %.1f s (paths.cache_dir sets the folder)",
        name,
        f"{images} images, " if images else "",
        path.stat().st_size / 1e6,
        path,
        time.monotonic() - start,
    )
    mapped = _load(path, required)
    return (tensors, None) if mapped is None else (mapped, path)
