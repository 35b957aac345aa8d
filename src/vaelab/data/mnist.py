"""MNIST from LeCun's IDX files: 55k/5k/10k train/val/test, 1×28×28 uint8."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vaelab.data.base import ImageDataModule
from vaelab.data.cache import file_fingerprint
from vaelab.data.idx import read_idx
from vaelab.errors import UserError

log = logging.getLogger(__name__)

FILES = {
    "train/images": "train-images-idx3-ubyte",
    "train/labels": "train-labels-idx1-ubyte",
    "test/images": "t10k-images-idx3-ubyte",
    "test/labels": "t10k-labels-idx1-ubyte",
}


class MNISTDataModule(ImageDataModule):
    """Reads ``<root>/MNIST/raw/*-ubyte[.gz]`` (torchvision's layout); a read-only root is fine."""

    image_shape = (1, 28, 28)
    n_conditions = 10
    name = "mnist"
    folder = "MNIST"

    def __init__(self, root: str, cache_dir: str, val_size: int = 5000, download: bool = True, **kw):
        super().__init__(root, cache_dir, **kw)
        self.val_size, self.download = val_size, download

    @property
    def raw_dir(self) -> Path:
        return Path(self.root) / self.folder / "raw"

    def _find(self, stem: str) -> Path | None:
        for candidate in (self.raw_dir / stem, self.raw_dir / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
        return None

    def _missing(self) -> list[str]:
        return [stem for stem in FILES.values() if self._find(stem) is None]

    def check(self) -> None:
        if self._missing() and self.download:
            self._try_download()
        if missing := self._missing():
            raise UserError(
                f"{self.folder} files not found in {self.raw_dir} (missing: "
                f"{', '.join(m + '[.gz]' for m in missing)}). Put the four IDX files "
                f"(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) there, or point "
                f"paths.data_dir at the folder that contains {self.folder}/raw/ "
                f"(e.g. paths.data_dir=/path/to/data)."
            )

    def _try_download(self) -> None:
        import torchvision

        log.info("%s not found under %s; trying torchvision's download", self.folder, self.root)
        created = [
            d for d in (Path(self.root), Path(self.root) / self.folder, self.raw_dir) if not d.exists()
        ]
        try:
            getattr(torchvision.datasets, self.folder)(self.root, download=True)
        except Exception as err:  # offline, read-only root, mirror down: check() reports it
            log.warning("download of %s failed: %s", self.folder, str(err).splitlines()[0])
            for d in reversed(created):  # leave no empty folders behind a failed download
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()

    def cache_params(self) -> dict:
        sources = [self._find(stem) for stem in FILES.values()]
        return {"sources": file_fingerprint(sources), "val_size": self.val_size}

    def decode_splits(self) -> dict[str, torch.Tensor]:
        raw = {key: read_idx(self._find(stem)) for key, stem in FILES.items()}
        n_train = len(raw["train/images"])
        if not 0 < self.val_size < n_train:
            raise UserError(
                f"dataset.val_size={self.val_size} must be between 1 and {n_train - 1} "
                f"(the number of training images minus one)."
            )
        # A fixed permutation (not the run's seed): every run validates on the same images.
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(0))
        val, train = order[: self.val_size], order[self.val_size :]
        out = {}
        for kind in ("images", "labels"):
            full = raw[f"train/{kind}"]
            out[f"train/{kind}"] = full[train].contiguous()
            out[f"val/{kind}"] = full[val].contiguous()
            out[f"test/{kind}"] = raw[f"test/{kind}"]
        for split in ("train", "val", "test"):
            out[f"{split}/images"] = out[f"{split}/images"].unsqueeze(1)
            out[f"{split}/labels"] = out[f"{split}/labels"].long()
        return out


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST: same IDX files and layout, under ``<root>/FashionMNIST/raw``."""

    name = "fashion_mnist"
    folder = "FashionMNIST"
