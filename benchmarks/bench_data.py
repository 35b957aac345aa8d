"""The benchmark's data: the real MNIST / CelebA sample when present, else synthetic files.

Every pipeline reads the same files. Synthetic data is written in the real formats (gzipped
IDX, a CelebA folder of JPEGs with its partition file), so the classic pipeline still pays
for PIL decoding and vaelab still builds its cache from JPEGs.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte")
MNIST_FILES += ("t10k-labels-idx1-ubyte",)


def data_dir_candidates() -> list[Path]:
    """$VAELAB_DATA_DIR (the folder the real-data tests read), when it is set."""
    env = os.environ.get("VAELAB_DATA_DIR")
    return [Path(env)] if env else []


def find_real(kind: str) -> Path | None:
    """The data root holding real MNIST (``mnist``) or CelebA (``celeba``), or None."""
    for root in data_dir_candidates():
        if kind == "mnist" and all((root / "MNIST" / "raw" / f"{f}.gz").is_file() for f in MNIST_FILES):
            return root
        if kind == "celeba" and (root / "celeba_sample" / "celeba" / "img_align_celeba").is_dir():
            return root / "celeba_sample"
        if kind == "celeba" and (root / "celeba" / "img_align_celeba").is_dir():
            return root
    return None


def write_synthetic_mnist(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Gzipped IDX files of noisy 28×28 'strokes' under ``root/MNIST/raw``."""
    from vaelab.data.idx import write_idx  # imports Lightning (vaelab.data): only when needed

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        images[np.arange(n), 4 + 2 * labels, 4:24] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def write_synthetic_celeba(root: Path, n: int, size=(178, 218), seed: int = 0) -> Path:
    """``root/celeba``: n JPEG 'faces' of CelebA's size, all in the train partition."""
    img_dir = root / "celeba" / "img_align_celeba"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    face = ((xx - w / 2) / (w / 3)) ** 2 + ((yy - h / 2) / (h / 3)) ** 2 < 1
    for i in range(1, n + 1):
        arr = (rng.random((h, w, 1)) * 40 + rng.integers(0, 200, 3)).astype(np.uint8)
        arr[face] = 255 - arr[face]
        Image.fromarray(arr).save(img_dir / f"{i:06d}.jpg", quality=90)
    lines = "".join(f"{i:06d}.jpg 0\n" for i in range(1, n + 1))
    (root / "celeba" / "list_eval_partition.txt").write_text(lines)
    return root


def unpacked_mnist(src_root: Path, dst_root: Path) -> Path:
    """A copy of ``src_root/MNIST/raw`` with the IDX files gunzipped, as torchvision's class reads them."""
    raw = dst_root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        if not (raw / name).is_file():
            with gzip.open(src_root / "MNIST" / "raw" / f"{name}.gz", "rb") as f, open(raw / name, "wb") as g:
                shutil.copyfileobj(f, g)
    return dst_root
