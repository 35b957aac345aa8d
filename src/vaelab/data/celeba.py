"""CelebA aligned faces from the official layout, center-cropped and resized once, at caching.

Expects ``<root>/celeba/img_align_celeba/*.jpg`` and ``<root>/celeba/list_eval_partition.txt``
(torchvision's layout). Works on partial copies: partition rows whose image is missing are
dropped, and an emptied valid/test split is carved from train. The square crop is a
fraction of the image width (148/178, the customary crop of the 178×218 originals), so
images at another resolution get the same framing.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from pathlib import Path

import numpy as np
import torch

from vaelab.data.base import SPLITS, ImageDataModule
from vaelab.data.cache import file_fingerprint
from vaelab.data.decode import decode_all, decode_image, split_rows
from vaelab.errors import UserError

log = logging.getLogger(__name__)

PARTITION_IDS = {"0": "train", "1": "val", "2": "test"}
DOWNLOAD_HINT = (
    "Download CelebA's 'Align&Cropped Images' (img_align_celeba.zip) and "
    "list_eval_partition.txt (and optionally list_attr_celeba.txt) from the CelebA site "
    "(mmlab.ie.cuhk.edu.hk/projects/CelebA.html), and lay them out as "
    "<folder>/celeba/img_align_celeba/000001.jpg … and <folder>/celeba/list_eval_partition.txt; "
    "then pass dataset.root=<folder> (default: paths.data_dir)."
)


def decode_face(path: str, size: int, crop_fraction: float) -> np.ndarray | None:
    """One face → uint8 (3, size, size): the centered square of ``crop_fraction`` of its width
    (the shorter side of CelebA's portrait images), resized; None when unreadable."""
    return decode_image(path, size, crop_fraction, channels=3)


class CelebADataModule(ImageDataModule):
    name = "celeba"

    def __init__(
        self,
        root: str,
        cache_dir: str,
        image_size: int = 64,
        crop_fraction: float = 148 / 178,
        carve_fraction: float = 0.05,
        decode_workers: int | None = None,
        **kw,
    ):
        super().__init__(root, cache_dir, **kw)
        self.image_size, self.crop_fraction = image_size, crop_fraction
        self.carve_fraction, self.decode_workers = carve_fraction, decode_workers

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @property
    def n_conditions(self) -> int:
        """CelebA's 40 binary attributes, when list_attr_celeba.txt is there."""
        return 40 if self.attr_file.is_file() else 0

    @property
    def base(self) -> Path:
        return Path(self.root) / "celeba"

    @property
    def image_dir(self) -> Path:
        return self.base / "img_align_celeba"

    @property
    def partition_file(self) -> Path:
        return self.base / "list_eval_partition.txt"

    @property
    def attr_file(self) -> Path:
        return self.base / "list_attr_celeba.txt"

    def check(self) -> None:
        if not self.image_dir.is_dir():
            raise UserError(f"CelebA images not found: {self.image_dir} does not exist. {DOWNLOAD_HINT}")
        if not self.partition_file.is_file():
            raise UserError(
                f"CelebA partition file not found: {self.partition_file} does not exist. {DOWNLOAD_HINT}"
            )

    def _image_names(self) -> set[str]:
        with os.scandir(self.image_dir) as it:
            return {e.name for e in it if e.name.lower().endswith((".jpg", ".jpeg", ".png"))}

    def _images_digest(self) -> tuple[int, str]:
        """(count, hash of every image's name, size and mtime): an image replaced in place
        under the same name changes the cache key too."""
        with os.scandir(self.image_dir) as it:
            entries = sorted(
                (e for e in it if e.name.lower().endswith((".jpg", ".jpeg", ".png"))), key=lambda e: e.name
            )
        digest = hashlib.sha1()
        for e in entries:
            st = e.stat()
            digest.update(f"{e.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return len(entries), digest.hexdigest()

    def cache_params(self) -> dict:
        meta = [p for p in (self.partition_file, self.attr_file) if p.is_file()]
        return {
            "meta": file_fingerprint(meta),
            "images": [str(self.image_dir.resolve()), *self._images_digest()],
            "size": self.image_size,
            "crop": self.crop_fraction,
            "carve": self.carve_fraction,
        }

    def assign_splits(self) -> dict[str, list[str]]:
        """File names per split: the official partition, restricted to images present."""
        present = self._image_names()
        splits: dict[str, list[str]] = {s: [] for s in SPLITS}
        rows = split_rows(
            self.partition_file,
            PARTITION_IDS,
            "'<image>.jpg <0|1|2>'",
            " Fetch list_eval_partition.txt again.",
        )
        for name, part in rows:
            if name in present:
                splits[PARTITION_IDS[part]].append(name)
        if not splits["train"]:
            raise UserError(
                f"None of the images listed in {self.partition_file}'s train split is in "
                f"{self.image_dir}. {DOWNLOAD_HINT}"
            )
        return self._carve_empty(splits)

    def _carve_empty(self, splits: dict[str, list[str]]) -> dict[str, list[str]]:
        empty = [s for s in ("val", "test") if not splits[s]]
        if not empty:
            return splits
        train = splits["train"]
        n = max(1, int(len(train) * self.carve_fraction))
        if len(train) <= n * len(empty):
            raise UserError(f"CelebA has only {len(train)} training images: too few to carve {empty} from.")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
        for i, s in enumerate(empty):
            splits[s] = [train[j] for j in sorted(order[i * n : (i + 1) * n])]
        taken = set(order[: n * len(empty)])
        splits["train"] = [name for j, name in enumerate(train) if j not in taken]
        log.warning(
            "CelebA split(s) %s have no images here; carved %d images each from train "
            "(%.0f%%), leaving %d for training.",
            "/".join(empty),
            n,
            100 * self.carve_fraction,
            len(splits["train"]),
        )
        return splits

    def _attributes(self, names: list[str]) -> torch.Tensor:
        """(N, 40) int8 attributes in {0, 1}; (N, 0) when the attribute file is absent."""
        if not self.attr_file.is_file():
            return torch.zeros(len(names), 0, dtype=torch.int8)
        rows = {}
        with open(self.attr_file) as f:
            for line in itertools.islice(f, 2, None):  # after the count and the header line
                parts = line.split()
                if parts:
                    rows[parts[0]] = [v == "1" for v in parts[1:]]
        width = len(next(iter(rows.values()))) if rows else 0
        if any(len(r) != width for r in rows.values()):
            raise UserError(
                f"{self.attr_file} is damaged: its rows have different numbers of attributes. Fetch "
                "list_attr_celeba.txt again, or delete it (attributes are optional)."
            )
        missing = [False] * width
        return torch.tensor([rows.get(n, missing) for n in names], dtype=torch.int8).view(len(names), width)

    def decode_splits(self) -> dict[str, torch.Tensor]:
        splits = self.assign_splits()
        names = [n for s in SPLITS for n in splits[s]]
        images, ok = self._decode_all(names)
        bad = {n for n, good in zip(names, ok.tolist(), strict=True) if not good}
        if bad:
            log.warning(
                "skipped %d unreadable CelebA image(s) (e.g. %s); re-download them to use them.",
                len(bad),
                ", ".join(str(self.image_dir / b) for b in sorted(bad)[:3]),
            )
            images = images[ok]  # the only copy, and only when some images were bad
            splits = {s: [n for n in splits[s] if n not in bad] for s in SPLITS}
        attrs = self._attributes([n for s in SPLITS for n in splits[s]])
        out, start = {}, 0
        for s in SPLITS:  # splits are consecutive slices (views) of one tensor
            if not splits[s]:
                raise UserError(f"CelebA split {s!r} has no readable images in {self.image_dir}.")
            end = start + len(splits[s])
            out[f"{s}/images"], out[f"{s}/labels"] = images[start:end], attrs[start:end]
            start = end
        return out

    def _decode_all(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        paths = [str(self.image_dir / n) for n in names]
        return decode_all(paths, self.image_size, self.crop_fraction, 3, self.decode_workers, "CelebA")
