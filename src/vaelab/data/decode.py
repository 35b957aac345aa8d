"""Image files → one uint8 tensor, in decode processes: what every folder-of-images dataset
(CelebA, a user's own folder) shares. Each image is center-cropped to a square of a fraction of
its shorter side (or not cropped), resized once, and decoded straight into its slot of one
preallocated tensor.
"""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from PIL import Image

from vaelab.errors import UserError
from vaelab.progress import Progress

log = logging.getLogger(__name__)

DECODE_CHUNK = 256  # images per task of a decode worker
MODES = {1: "L", 3: "RGB"}  # channels → PIL mode


def decode_image(path: str, size: int, crop_fraction: float | None, channels: int = 3) -> np.ndarray | None:
    """One image → uint8 (channels, size, size): a centered square of ``crop_fraction`` of the
    shorter side (None: the whole image, squeezed to a square), then resized.

    Returns None for an unreadable image (the caller skips and counts it).
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            side = max(1, round(min(w, h) * crop_fraction)) if crop_fraction else max(w, h)
            # Let the JPEG decoder downscale by 2/4/8 when that still leaves ≥ size pixels.
            scale = size / side
            im.draft(MODES[channels], (int(np.ceil(w * scale)), int(np.ceil(h * scale))))
            ratio = im.size[0] / w
            w, h = im.size
            im = im.convert(MODES[channels])
            if crop_fraction:
                side = max(1, round(side * ratio))
                left, top = (w - side) // 2, max(0, (h - side) // 2)
                im = im.crop((left, top, left + side, top + side))
            im = im.resize((size, size), Image.BILINEAR)
            pixels = np.asarray(im, dtype=np.uint8)
            return np.ascontiguousarray(pixels[None] if channels == 1 else pixels.transpose(2, 0, 1))
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return None


def _decode_chunk(args) -> tuple[np.ndarray, np.ndarray]:
    """A chunk of images as one (n, C, size, size) block + its ok mask: one buffer to send back
    and to copy in, instead of n small arrays that fragment the receiving process's heap."""
    paths, size, crop, channels = args
    block, ok = np.zeros((len(paths), channels, size, size), np.uint8), np.zeros(len(paths), bool)
    for i, path in enumerate(paths):
        image = decode_image(path, size, crop, channels)
        if image is not None:
            block[i], ok[i] = image, True
    return block, ok


def decode_all(
    paths: list[str], size: int, crop: float | None, channels: int, workers: int | None, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode into one preallocated uint8 tensor (never a second copy) + an ok mask; ``what``
    names the data in the log lines ("CelebA", "folder").

    The decode workers are forked before the tensor exists, and ``torch.empty`` leaves its
    pages untouched: a tensor zero-filled before the fork would be shared copy-on-write, so
    each page the parent wrote afterwards would be copied while the children kept the old
    one (at CelebA's full size, 5.6 GB summed over the processes for 2.5 GB of images).
    """
    chunk = DECODE_CHUNK
    jobs = [(paths[i : i + chunk], size, crop, channels) for i in range(0, len(paths), chunk)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    folder = os.path.commonpath(paths) if paths else ""
    log.info(
        "decoding %d %s images from %s to %dx%d with %d process(es)",
        len(paths),
        what,
        folder,
        size,
        size,
        workers,
    )
    with contextlib.ExitStack() as stack:
        if workers > 1:  # map() submits every job: the workers fork here, before the allocation
            results = stack.enter_context(ProcessPoolExecutor(workers)).map(_decode_chunk, jobs)
        else:
            results = map(_decode_chunk, jobs)
        images = torch.empty(len(paths), channels, size, size, dtype=torch.uint8)
        ok = torch.zeros(len(paths), dtype=torch.bool)
        with Progress(len(paths), f"caching {what} {size}x{size}", "images", logger=log) as progress:
            for j, (block, good) in enumerate(results):
                images[j * chunk : j * chunk + len(block)] = torch.from_numpy(block)
                ok[j * chunk : j * chunk + len(block)] = torch.from_numpy(good)
                progress.update(len(block))
    return images, ok


def split_rows(path, splits, expected: str, hint: str = ""):
    """(name, split) of each ``<name> <split>`` line of a split file (the name may hold spaces),
    each split one of ``splits``; a bad line stops with its number and what was expected."""
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            parts = line.rsplit(maxsplit=1)
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in splits:
                raise UserError(f"{path}, line {line_no}: expected {expected}, got {line.strip()!r}.{hint}")
            yield parts[0], parts[1]
