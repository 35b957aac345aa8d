"""Batches as slices of in-memory uint8 tensors: no per-image Python work, no workers.

The sampler draws a fresh permutation each epoch from (seed, epoch), so the data order
is reproducible and resumable, and under DDP each rank takes every world_size-th index of
the same permutation (padded, like DistributedSampler, so all ranks step together).

Where a split lives is chosen once, at setup (:func:`storage_device`): on the accelerator
when it fits, so a batch is one gather in device memory and nothing crosses the bus; else
in host memory, with each batch gathered into a pinned buffer and copied asynchronously
(:class:`PinnedStager`), so the copy overlaps the previous step's compute.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from vaelab.errors import UserError

CPU = torch.device("cpu")
STAGING_DEPTH = 2  # pinned buffers per tensor: one being copied while the next is filled


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def check_on_device(on_device, memory_fraction: float) -> None:
    """Raise :class:`UserError` for a ``dataset.on_device`` / ``device_memory_fraction`` typo."""
    if on_device not in ("auto", True, False):
        raise UserError(
            f"dataset.on_device={on_device!r} is invalid: it must be auto (on the accelerator "
            f"when the split fits), true (always) or false (host memory)."
        )
    if isinstance(memory_fraction, bool) or not (0 < memory_fraction <= 1):
        raise UserError(
            f"dataset.device_memory_fraction={memory_fraction!r} is invalid: it must be a number "
            f"in (0, 1], the share of free accelerator memory a split may take (e.g. 0.5)."
        )


def storage_device(
    nbytes: int, device: torch.device, on_device, memory_fraction: float, free_bytes: int | None = None
) -> torch.device:
    """Where a split of ``nbytes`` should live to be served to ``device``.

    ``auto`` keeps it on a CUDA device when it takes at most ``memory_fraction`` of the free
    memory there (the rest is for the model); other accelerators report no free memory, so
    ``auto`` keeps their data on the host and ``true`` forces it over.
    """
    if device.type == "cpu" or on_device is False:
        return CPU
    if on_device is True:
        return device
    if device.type != "cuda":
        return CPU
    free = torch.cuda.mem_get_info(device)[0] if free_bytes is None else free_bytes
    return device if nbytes <= memory_fraction * free else CPU


class EpochBatchSampler:
    """Index batches for one epoch; Lightning calls ``set_epoch`` before each epoch."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, drop_last=False):
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0
        self.served, self.resume_at = 0, 0  # batches handed out this epoch; where to restart

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # a saved position belongs to the epoch it was saved in
            self.resume_at = 0
        self.epoch = epoch

    def state_dict(self) -> dict:
        """The position in the epoch, saved in checkpoints: a run resumed mid-epoch goes on
        with the next batch of the same order instead of starting the epoch over."""
        return {"epoch": self.epoch, "batches_served": self.served}

    def load_state_dict(self, state: dict) -> None:
        epoch, served = state["epoch"], state["batches_served"]
        if served >= len(self):  # saved after the epoch's last batch: go on at the next epoch's start
            epoch, served = epoch + 1, 0
        self.epoch, self.resume_at = epoch, served

    def indices(self) -> Tensor:
        """This rank's share of this epoch's order (a CPU tensor)."""
        if not self.shuffle:
            order = torch.arange(self.n)
        else:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        rank, world = _dist_rank_world()
        if world > 1:
            per_rank = math.ceil(self.n / world)
            order = torch.cat([order, order[: per_rank * world - self.n]])[rank::world]
        return order

    def __len__(self) -> int:
        _, world = _dist_rank_world()
        per_rank = math.ceil(self.n / world)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def batches(self, order: Tensor) -> Iterator[Tensor]:
        """``order`` cut into this epoch's batches (views, on whatever device ``order`` is)."""
        self.served, self.resume_at = self.resume_at, 0
        for start in range(self.served * self.batch_size, len(self) * self.batch_size, self.batch_size):
            self.served += 1
            yield order[start : start + self.batch_size]

    def __iter__(self) -> Iterator[Tensor]:
        return self.batches(self.indices())


class PinnedStager:
    """Host → device copies of gathered batches through a ring of pinned buffers.

    A batch is gathered straight into a pinned buffer (no pageable intermediate) and copied
    with ``non_blocking``; a buffer is refilled only after its previous copy finished
    (a CUDA event), so the host never overwrites data still in flight.
    """

    def __init__(self, source: Tensor, device: torch.device, rows: int):
        self.source, self.device = source, device
        shape = (rows, *source.shape[1:])
        self.buffers = [torch.empty(shape, dtype=source.dtype).pin_memory() for _ in range(STAGING_DEPTH)]
        self.events: list[torch.cuda.Event | None] = [None] * STAGING_DEPTH
        self.turn = 0

    def __call__(self, idx: Tensor) -> Tensor:
        slot = self.turn % STAGING_DEPTH
        self.turn += 1
        if self.events[slot] is not None:
            self.events[slot].synchronize()
        buf = self.buffers[slot][: len(idx)]
        torch.index_select(self.source, 0, idx, out=buf)
        out = buf.to(self.device, non_blocking=True)
        self.events[slot] = torch.cuda.Event()
        self.events[slot].record()
        return out


class TensorBatchLoader:
    """Yields ``(images[idx], labels[idx])`` on ``device`` for each index batch of the sampler.

    With the tensors already on ``device`` (or both on the CPU) a batch is one gather there;
    with host tensors and a CUDA ``device`` it goes through :class:`PinnedStager`, so
    Lightning's own transfer finds the batch already in place.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_sampler: EpochBatchSampler,
        device: torch.device | None = None,
    ):
        self.images, self.labels, self.batch_sampler = images, labels, batch_sampler
        # Lightning calls set_epoch on `loader.sampler` (not on `loader.batch_sampler`): without
        # this alias every epoch would replay epoch 0's order
        self.sampler = batch_sampler
        self.device = torch.device(device) if device is not None else images.device

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def state_dict(self) -> dict:  # Lightning saves it with the fit loop: see EpochBatchSampler
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state)

    def _staged(self) -> bool:
        return self.images.device.type == "cpu" and self.device.type == "cuda"

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        sampler = self.batch_sampler
        if self._staged():
            rows = sampler.batch_size
            stage_images = PinnedStager(self.images, self.device, rows)
            stage_labels = PinnedStager(self.labels, self.device, rows)
            for idx in sampler.batches(sampler.indices()):
                yield stage_images(idx), stage_labels(idx)
            return
        order = sampler.indices().to(self.images.device, non_blocking=True)  # one copy per epoch
        for idx in sampler.batches(order):  # index_select: ~15x faster than images[idx] on CPU
            yield torch.index_select(self.images, 0, idx), torch.index_select(self.labels, 0, idx)
