"""A training DataLoader that resumes mid-epoch exactly (Lightning's ``state_dict`` protocol).

* :class:`EpochRandomSampler`: the shuffled order is a function of ``(seed, epoch)`` only; Lightning
  calls ``set_epoch`` at every epoch start, so a resumed run draws the same order as an uninterrupted
  one. It is a ``RandomSampler``, so under DDP Lightning swaps in its own ``DistributedSampler``
  (also ordered by seed and epoch).
* :class:`ResumableDataLoader`: a plain ``DataLoader`` that reports how many batches of the current
  epoch were *trained on* in ``state_dict()`` (Lightning saves it in every checkpoint) and skips
  that many batches on the first iteration after ``load_state_dict()``.

Lightning's training fetcher does not prefetch from a loader with a length (it knows where the epoch
ends), so the batches yielded in the current epoch are the batches trained on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler


class EpochRandomSampler(RandomSampler):
    """Random permutation of ``range(len(data_source))`` seeded by ``seed + epoch``."""

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class ResumableDataLoader(DataLoader):
    """``DataLoader`` with ``state_dict``/``load_state_dict`` for exact mid-epoch resumption."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]  # a generator that skips consumed batches
        skip = getattr(self, "_resume_skip", 0)
        self._resume_skip = 0
        self._yielded = 0
        iterator = super().__iter__()
        if skip >= len(self):  # the checkpoint was taken at the end of an epoch
            skip = 0
        for _ in range(skip):
            next(iterator)
        self._yielded = skip
        return self._count(iterator)

    def _count(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for batch in iterator:
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"trained_batches": getattr(self, "_yielded", 0), "epoch": int(getattr(self.sampler, "epoch", 0))}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Called by Lightning before the first iterator of a resumed run is created: restores the
        epoch of the sampler (Lightning sets it only after that iterator exists) and the skip count."""
        self._resume_skip = int(state.get("trained_batches", 0))
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(int(state.get("epoch", 0)))
