"""What every vaelab dataset shares: cached uint8 splits served as tensor slices.

A subclass says how to check its source files and how to decode them into
``{"train"|"val"|"test": {"images": uint8 (N,C,H,W), "labels": (N,...)}}``; this base class
caches that, keeps each split where ``on_device`` says (on the accelerator when it fits),
serves batches with :class:`TensorBatchLoader`, and turns them into floats in [0, 1] only
once they are on the device (binarised for a Bernoulli decoder if asked): the uint8 split is
4× smaller than floats, on the device and on the bus.
"""

from __future__ import annotations

import abc
import logging

import lightning as L
import torch
from torch import Tensor

from vaelab.data.cache import cache_key, load_or_build
from vaelab.data.loader import CPU, EpochBatchSampler, TensorBatchLoader, check_on_device, storage_device

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DEQUANTISED = "uniformly dequantised 8-bit data (k + u)/256"  # what a density is scored on


class ImageDataModule(L.LightningDataModule, abc.ABC):
    image_shape: tuple[int, int, int]
    n_conditions: int = 0  # size of the label vector a conditional VAE sees (classes one-hot)
    name: str

    def __init__(
        self,
        root: str,
        cache_dir: str,
        batch_size: int = 128,
        eval_batch_size: int = 500,
        binarize: bool = False,
        dequantize: bool = True,
        seed: int = 0,
        on_device: bool | str = "auto",
        device_memory_fraction: float = 0.5,
    ):
        super().__init__()
        check_on_device(on_device, device_memory_fraction)
        self.root, self.cache_dir = str(root), str(cache_dir)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.binarize, self.dequantize, self.seed = binarize, dequantize, seed
        self.on_device, self.device_memory_fraction = on_device, device_memory_fraction
        self.splits: dict[str, dict[str, Tensor]] = {}
        self.device = CPU  # where batches are served: the trainer's device, known at setup
        self.placed_for: torch.device | None = None
        self.cache_file = None  # the file the splits are mapped from, once loaded
        self.mapped_splits: set[str] = set()  # the splits served straight from that mapping

    # -- what a dataset provides -------------------------------------------------
    @abc.abstractmethod
    def check(self) -> None:
        """Raise :class:`UserError` saying what to download and where, if sources are missing."""

    @abc.abstractmethod
    def cache_params(self) -> dict:
        """Everything the decoded splits depend on: source fingerprints + preprocessing."""

    @abc.abstractmethod
    def decode_splits(self) -> dict[str, Tensor]:
        """Decode the sources into flat tensors ``{"train/images": …, "train/labels": …}``."""

    # -- shared machinery --------------------------------------------------------
    def load_splits(self) -> dict[str, dict[str, Tensor]]:
        self.check()
        if self._is_zero():  # fingerprinting 200,000 JPEGs takes seconds: say what is going on
            log.info("%s: looking for its decoded splits in %s", self.name, self.cache_dir)
        key = cache_key(**self.cache_params())
        required = [f"{s}/{k}" for s in SPLITS for k in ("images", "labels")]
        flat, self.cache_file = load_or_build(self.cache_dir, self.name, key, self.decode_splits, required)
        splits = {s: {k.split("/")[1]: v for k, v in flat.items() if k.startswith(s + "/")} for s in SPLITS}
        self.mapped_splits = set(SPLITS) if self.cache_file is not None else set()
        if self.binarize:  # fixed binarisation of the evaluation data, dynamic for train
            for s in ("val", "test"):
                splits[s]["images"] = self.fixed_binarization(s, splits[s]["images"])
                self.mapped_splits.discard(s)
        return splits

    def scored_data(self) -> str:
        """What validation and test batches hold, for the outputs that report their numbers."""
        if self.binarize:
            return f"binarised pixels (one fixed draw per split, dataset.seed={self.seed})"
        if self.dequantize:
            return f"{DEQUANTISED}, fixed noise seed"
        return "the 8-bit values k/255"

    def fixed_binarization(self, split: str, images: Tensor) -> Tensor:
        """``split``'s one fixed 0/255 draw: the same for every run with this seed."""
        return binarize_uint8(images, self.seed + SPLITS.index(split))

    def prepare_data(self) -> None:
        # on one process per node: builds the cache before ranks read it (and keeps what it
        # loaded, so this process does not load it twice; the other ranks load it in setup)
        self.splits = self.splits or self.load_splits()

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.device = self.trainer.strategy.root_device
        if not self.splits:
            self.splits = self.load_splits()
        if self.placed_for != self.device:
            self._place_splits()
            self.placed_for = self.device

    def _place_splits(self) -> None:
        """Move each split to where it is served from: the device when it fits, else host."""
        for name, split in self.splits.items():
            nbytes = sum(t.numel() * t.element_size() for t in split.values())
            where = storage_device(nbytes, self.device, self.on_device, self.device_memory_fraction)
            self.splits[name] = {k: t.to(where) for k, t in split.items()}
            if self._is_zero():  # every rank has the same split: one line, not one per rank
                log.info(
                    "%s %s: %d images of shape %s, %.0f MB %s",
                    self.name,
                    name,
                    len(split["images"]),
                    tuple(self.image_shape),
                    nbytes / 1e6,
                    self._where(name, where),
                )

    def _is_zero(self) -> bool:
        return self.trainer is None or self.trainer.is_global_zero

    def _where(self, split: str, where: torch.device) -> str:
        """Where a split lives, said so that N ranks do not read as N copies."""
        world = self.trainer.world_size if self.trainer is not None else 1
        if where.type != "cpu":
            return f"in {where.type} memory" + (
                f" (on each of the {world} processes' devices)" if world > 1 else ""
            )
        if split in self.mapped_splits:
            name = self.cache_file.name
            return f"mapped from the cache {name} (paths.cache_dir): one copy, shared between processes"
        return "in cpu memory" + (" (one copy per process)" if world > 1 else "")

    def _loader(self, split: str, shuffle: bool) -> TensorBatchLoader:
        data = self.splits[split]
        sampler = EpochBatchSampler(
            len(data["images"]),
            self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            seed=self.seed,
        )
        return TensorBatchLoader(data["images"], data["labels"], sampler, device=self.device)

    def train_dataloader(self) -> TensorBatchLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> TensorBatchLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> TensorBatchLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Float images: training batches binarised afresh (``binarize``); for a density
        (``dequantize``), every split uniformly dequantised, (k + u)/256, so that validation and
        test score the data src/eval.py scores and its bits/dim refer to (the LightningModule
        fixes the noise's seed for validation and test: the same data every epoch); else k/255."""
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        if self.dequantize and not self.binarize:
            return dequantize_on_device(images), labels
        x = to_unit_float(images)
        if training and self.binarize:
            x = torch.bernoulli(x)
        return x, labels


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] → float32 [0, 1], on whatever device the batch is."""
    return images.float().div_(255.0)


def dequantize_on_device(images: Tensor) -> Tensor:
    """uint8 k → (k + u)/256, u ~ U[0, 1), drawn where the batch is (no host round trip)."""
    return images.float().add_(torch.rand(images.shape, device=images.device)).div_(256.0)


def binarize_uint8(images: Tensor, seed: int) -> Tensor:
    """A fixed stochastic binarisation (pixel on with probability = intensity), as uint8 0/255."""
    g = torch.Generator().manual_seed(seed)
    probs = images.float().div_(255.0)
    return (torch.rand(probs.shape, generator=g) < probs).to(torch.uint8).mul_(255)
