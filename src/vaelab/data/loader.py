"""Batches as slices of in-memory uint8 tensors: no per-image Python work, no workers.

The sampler draws a fresh permutation each epoch from (seed, epoch), so the data order
is reproducible and resumable, and under DDP each rank takes every world_size-th index of
the same permutation (padded, like DistributedSampler, so all ranks step together).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochBatchSampler:
    """Index batches for one epoch; Lightning calls ``set_epoch`` before each epoch."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, drop_last=False):
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0
        self.served, self.resume_at = 0, 0  # batches handed out this epoch; where to restart

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        """The position in the epoch, saved in checkpoints: a run resumed mid-epoch goes on
        with the next batch of the same order instead of starting the epoch over."""
        return {"epoch": self.epoch, "batches_served": self.served}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.resume_at = state["epoch"], state["batches_served"]

    def _indices(self) -> Tensor:
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

    def __iter__(self) -> Iterator[Tensor]:
        order = self._indices()
        self.served, self.resume_at = self.resume_at, 0
        for start in range(self.served * self.batch_size, len(self) * self.batch_size, self.batch_size):
            self.served += 1
            yield order[start : start + self.batch_size]


class TensorBatchLoader:
    """Yields ``(images[idx], labels[idx])`` for each index batch of the sampler."""

    def __init__(self, images: Tensor, labels: Tensor, batch_sampler: EpochBatchSampler):
        self.images, self.labels, self.batch_sampler = images, labels, batch_sampler
        # Lightning calls set_epoch on `loader.sampler` (not on `loader.batch_sampler`): without
        # this alias every epoch would replay epoch 0's order
        self.sampler = batch_sampler

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def state_dict(self) -> dict:  # Lightning saves it with the fit loop: see EpochBatchSampler
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for idx in self.batch_sampler:
            idx = idx.to(self.images.device)
            yield self.images[idx], self.labels[idx]
