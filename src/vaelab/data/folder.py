"""A folder of one's own images: every PNG, JPEG, BMP and WebP file under ``root``, recursively.

Like torchvision's ``ImageFolder`` (labels from the first-level sub-folders, when asked) and
pythae's "a folder where each file is a data": the images are split by seeded fractions (or a
split file), center-cropped and resized once, and cached as uint8 like CelebA. Zero-byte and
unreadable files are skipped and counted in one warning; a folder with no images, too few for
the splits, or images smaller than ``image_size`` is refused with what to do.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from PIL import Image

from vaelab.data.base import SPLITS, ImageDataModule
from vaelab.data.cache import file_fingerprint
from vaelab.data.decode import decode_all, split_rows
from vaelab.errors import UserError

log = logging.getLogger(__name__)

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


class FolderDataModule(ImageDataModule):
    name = "folder"

    def __init__(
        self,
        root: str,
        cache_dir: str,
        image_size: int = 64,
        crop_fraction: float | None = 1.0,
        channels: int | None = None,
        labels: bool = False,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        split_file: str | None = None,
        decode_workers: int | None = None,
        **kw,
    ):
        super().__init__(root, cache_dir, **kw)
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < value < 0.5:
                raise UserError(
                    f"dataset.{key}={value!r} is invalid: it must be a fraction in (0, 0.5), e.g. 0.05."
                )
        if crop_fraction is not None and not 0 < crop_fraction <= 1:
            raise UserError(
                f"dataset.crop_fraction={crop_fraction!r} is invalid: it must be in (0, 1] (the share of "
                f"each image's shorter side kept as a centered square) or null (no crop)."
            )
        if channels not in (None, 1, 3):
            raise UserError(
                f"dataset.channels={channels!r} is invalid: use 1 (grey), 3 (RGB) or null (the data's)."
            )
        self.image_size, self.crop_fraction, self.channels = image_size, crop_fraction, channels
        self.labels, self.val_fraction, self.test_fraction = labels, val_fraction, test_fraction
        self.split_file, self.decode_workers = split_file, decode_workers
        self._files: list[Path] | None = None
        self._empty = 0  # zero-byte image files found (skipped)
        self._header_cache: dict[Path, tuple[str, tuple[int, int]]] | None = None

    # -- what is in the folder -----------------------------------------------------
    def files(self) -> list[Path]:
        """Every non-empty image file under root, sorted (zero-byte ones are counted as skipped)."""
        if self._files is None:
            found = sorted(
                p for p in Path(self.root).rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()
            )
            self._files = [p for p in found if p.stat().st_size > 0]
            self._empty = len(found) - len(self._files)
        return self._files

    def classes(self) -> list[str]:
        """The first-level sub-folders that hold images: the class names, sorted."""
        return sorted(
            {
                p.relative_to(self.root).parts[0]
                for p in self.files()
                if len(p.relative_to(self.root).parts) > 1
            }
        )

    @property
    def n_conditions(self) -> int:
        return len(self.classes()) if self.labels else 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self._channels(), self.image_size, self.image_size)

    def _headers(self) -> dict[Path, tuple[str, tuple[int, int]]]:
        """(mode, size) of every readable image, from its header (one pass, kept): what the
        channel count and the size check read."""
        if self._header_cache is None:
            self._header_cache = {}
            for path in self.files():
                try:
                    with Image.open(path) as im:
                        self._header_cache[path] = (im.mode, im.size)
                except (OSError, ValueError, SyntaxError):
                    continue  # counted as skipped when decoding
        return self._header_cache

    def _channels(self) -> int:
        """dataset.channels, else 1 when every readable image is grey, 3 otherwise."""
        if self.channels is not None:
            return self.channels
        return 1 if all(mode in GREY_MODES for mode, _ in self._headers().values()) else 3

    def check(self) -> None:
        root = Path(self.root)
        if not root.is_dir():
            raise UserError(
                f"dataset.root={self.root} is not a folder: point it at the folder that holds your images."
            )
        n = len(self.files())
        if n == 0:
            raise UserError(
                f"dataset.root={self.root} holds no images: dataset=folder reads every "
                f"{', '.join(s[1:].upper() for s in SUFFIXES[:4])} and WEBP file under it, recursively, "
                f"and found none (or only empty files). Put your images there, or point dataset.root at "
                f"the folder that has them."
            )
        if not self.split_file:
            sizes = {"val": round(n * self.val_fraction), "test": round(n * self.test_fraction)}
            sizes["train"] = n - sizes["val"] - sizes["test"]
            if min(sizes.values()) < 1:
                raise UserError(
                    f"dataset.root={self.root} holds {n} image(s): too few for the train/val/test splits "
                    f"(dataset.val_fraction={self.val_fraction} and dataset.test_fraction="
                    f"{self.test_fraction} give {sizes['train']}/{sizes['val']}/{sizes['test']}); add images "
                    f"or raise the fractions (each split needs at least one)."
                )
        if self.labels and len(self.classes()) < 2:
            raise UserError(
                f"dataset.labels=true takes the classes from the sub-folders of dataset.root={self.root}, "
                f"but it has {len(self.classes())} with images: put each class's images in a folder of its "
                f"own (root/cats/…, root/dogs/…), or set dataset.labels=false."
            )

    def cache_params(self) -> dict:
        digest = hashlib.sha1()
        for p in self.files():
            st = p.stat()
            digest.update(f"{p.relative_to(self.root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        split = [file_fingerprint([Path(self.split_file)])] if self.split_file else []
        return {
            "images": [str(Path(self.root).resolve()), len(self.files()), digest.hexdigest()],
            "size": self.image_size,
            "crop": self.crop_fraction,
            "channels": self._channels(),
            "labels": self.labels,
            "fractions": [self.val_fraction, self.test_fraction, self.seed],
            "split_file": split,
        }

    # -- splits and decoding ----------------------------------------------------------
    def assign_splits(self, n: int) -> list[str]:
        """The split of each of the n files: from the split file, else seeded fractions."""
        if self.split_file:
            return self._splits_from_file()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        n_val, n_test = round(n * self.val_fraction), round(n * self.test_fraction)
        split = ["train"] * n
        for i in order[:n_val]:
            split[i] = "val"
        for i in order[n_val : n_val + n_test]:
            split[i] = "test"
        return split

    def _splits_from_file(self) -> list[str]:
        """``<path relative to root> <train|val|test>`` per line; a file it does not name: train."""
        expected = "'<image path relative to dataset.root> <train|val|test>'"
        named = dict(split_rows(self.split_file, SPLITS, expected))
        return [named.get(str(p.relative_to(self.root)), "train") for p in self.files()]

    def _check_sizes(self) -> None:
        """Images whose crop is smaller than image_size would be blown up: refused, named."""
        crop = self.crop_fraction or 1
        small = [
            f"{p.relative_to(self.root)} ({w}x{h})"
            for p, (_, (w, h)) in self._headers().items()
            if min(w, h) * crop < self.image_size
        ]
        if small:
            raise UserError(
                f"{len(small)} image(s) under dataset.root={self.root} are smaller than "
                f"dataset.image_size={self.image_size} after the crop (e.g. {', '.join(small[:3])}): "
                f"use a smaller dataset.image_size, a larger dataset.crop_fraction, or larger images."
            )

    def decode_splits(self) -> dict[str, torch.Tensor]:
        files = self.files()
        self._check_sizes()
        images, ok = decode_all(
            [str(p) for p in files],
            self.image_size,
            self.crop_fraction,
            self._channels(),
            self.decode_workers,
            "folder",
        )
        skipped = [p for p, good in zip(files, ok.tolist(), strict=True) if not good]
        if skipped or self._empty:
            log.warning(
                "dataset=folder: skipped %d file(s) that are not readable images (%d empty%s); the other "
                "%d images are used",
                len(skipped) + self._empty,
                self._empty,
                f", e.g. {skipped[0]}" if skipped else "",
                int(ok.sum()),
            )
        classes = self.classes()
        labels = torch.tensor(
            [classes.index(p.relative_to(self.root).parts[0]) if self.labels else 0 for p in files],
            dtype=torch.int64,
        )
        split = self.assign_splits(len(files))
        out = {}
        for s in SPLITS:
            keep = torch.tensor([good and part == s for good, part in zip(ok.tolist(), split, strict=True)])
            if not keep.any():
                raise UserError(
                    f"dataset=folder: the {s} split of dataset.root={self.root} has no images "
                    f"({int(ok.sum())} readable in all, dataset.val_fraction={self.val_fraction}, "
                    f"dataset.test_fraction={self.test_fraction}): add images or raise the fractions."
                )
            out[f"{s}/images"] = images[keep]
            out[f"{s}/labels"] = (
                labels[keep] if self.labels else torch.zeros(int(keep.sum()), 0, dtype=torch.int8)
            )
        return out
