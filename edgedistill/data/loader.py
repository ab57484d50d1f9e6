"""Batches of a :class:`~edgedistill.data.core.SampleSet`, through ``torch.utils.data.DataLoader`` when worker
processes decode or memory is pinned, else read in this process.

The order is given (a seeded permutation per epoch, or the split's own order), and a resumed epoch
starts at the batch it stopped at: the batch sampler yields the same index lists whatever the
worker count, so ``--resume`` stays exact. A SampleSet reads a whole batch in one
``__getitems__`` call (sorted, so memory-mapped files are read front to back); worker processes
decode while the model trains; memory is pinned when batches go to a GPU.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np

from ..errors import EdgeDistillError
from .core import SampleSet

if TYPE_CHECKING:
    import torch

MAX_AUTO_WORKERS = 4


class OrderedBatches:
    """Index lists of ``batch_size`` along ``order``, from batch ``start`` on (a DataLoader batch sampler).
    ``part`` (rank, processes): this process's share of each batch, every ``processes``-th position from ``rank``
    on, so processes training together split one global batch."""

    def __init__(self, order: np.ndarray, batch_size: int, start: int = 0, part: tuple[int, int] = (0, 1)) -> None:
        self.order, self.batch_size, self.start = np.asarray(order, dtype=np.int64), batch_size, start
        self.rank, self.processes = part

    def __len__(self) -> int:
        return max(0, -(-len(self.order) // self.batch_size) - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.start, -(-len(self.order) // self.batch_size)):
            yield self.order[b * self.batch_size:(b + 1) * self.batch_size][self.rank::self.processes].tolist()


class _Reads:
    """``split`` as the DataLoader's dataset. A batch that fails with an EdgeDistillError (a sample with
    NaN, an undecodable file) comes back as the error itself, which :func:`batches` raises in the main
    process as the one sentence it is (torch would re-raise it wrapped in the worker's traceback)."""

    def __init__(self, split: SampleSet) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitems__(self, indices: list[int]):
        try:
            return self.split.__getitems__(indices)
        except EdgeDistillError as e:
            return e

    def __getitem__(self, i: int):
        return self.__getitems__([int(i)])


def _to_tensors(batch):
    """Arrays become tensors; texts stay a list of strings (each model tokenises them itself)."""
    if isinstance(batch, EdgeDistillError):
        return batch
    import torch

    x, y, idx = batch
    return (torch.from_numpy(x) if isinstance(x, np.ndarray) else x), torch.from_numpy(y), torch.from_numpy(idx)


def auto_workers(split: SampleSet, workers: Optional[int]) -> int:
    """The recipe's ``data.workers``, or: none for arrays, up to 4 (leaving a core to train) for decoding sources."""
    if workers is not None:
        return workers
    if not split.decodes:
        return 0
    return max(0, min(MAX_AUTO_WORKERS, (os.cpu_count() or 1) - 1))


def batches(split: SampleSet, batch_size: int, order: Optional[np.ndarray] = None, start: int = 0,
            workers: Optional[int] = None, pin_memory: bool = False,
            part: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(x, y, positions)`` tensors for each batch of ``split`` along ``order`` (default: in order); with ``part``
    (rank, processes), this process's share of each batch."""
    import torch  # here, not at the top: the torch-free commands import this package's data sources

    order = np.arange(len(split)) if order is None else order
    n_workers = auto_workers(split, workers)
    reads, sampler = _Reads(split), OrderedBatches(order, batch_size, start, part)
    if not n_workers and not pin_memory:  # read here: the DataLoader would only add its bookkeeping, ~0.1 ms a batch
        # Its iterator draws a seed from torch's global generator; the same draw keeps every later random number
        # (augmentations, dropout) what it was.
        torch.empty((), dtype=torch.int64).random_()
        return _raising(_to_tensors(reads.__getitems__(b)) for b in sampler)
    loader = torch.utils.data.DataLoader(reads, batch_sampler=sampler, collate_fn=_to_tensors, num_workers=n_workers,
                                         pin_memory=pin_memory, prefetch_factor=2 if n_workers else None)
    return _raising(iter(loader))


def _raising(loader_iter: Iterator) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    for batch in loader_iter:
        if isinstance(batch, EdgeDistillError):
            raise batch
        yield batch
