"""An ``.npy`` file read by rows with positioned reads: the inputs of the ``npy`` source and of the decoded-data
cache, and the teacher cache's shards."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class NpyRows:
    """An ``.npy`` array on disk whose rows are read with positioned reads (``os.pread``), a run of
    consecutive rows at a time. Unlike a memory map, rows once read do not stay in the process's resident
    memory (they sit in the kernel's page cache, which it reclaims as it likes), so the process's RSS is
    bounded by the batch however large the file. Offers what ``ArraySplit`` uses of an array: ``shape``,
    ``dtype``, ``ndim``, ``len`` and indexing by a slice or by sorted positions."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            self.offset = f.tell()
        if dtype.hasobject:
            raise ValueError("it holds Python objects")
        if fortran and len(shape) > 1:
            raise ValueError("it is in Fortran order; save it with np.save(np.ascontiguousarray(x))")
        self.shape, self.dtype, self.ndim = tuple(shape), dtype, len(shape)
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        if self.path.stat().st_size < self.offset + self.row_bytes * (shape[0] if shape else 0):
            raise ValueError("the file is shorter than its header says (truncated)")

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.row_bytes * (self.shape[0] if self.shape else 1)

    def _rows(self, fd: int, start: int, count: int) -> np.ndarray:
        raw = os.pread(fd, count * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(raw, dtype=self.dtype).reshape((count, *self.shape[1:]))

    def __getitem__(self, key) -> np.ndarray:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if isinstance(key, slice):
                start, stop, step = key.indices(len(self))
                if step != 1:
                    return self[np.arange(start, stop, step)]
                return self._rows(fd, start, max(0, stop - start))
            idx = np.asarray(key, dtype=np.int64).reshape(-1)
            out = np.empty((len(idx), *self.shape[1:]), self.dtype)
            if len(idx) == 0:
                return out
            if idx.min() < 0 or idx.max() >= len(self):
                raise IndexError(f"{self.path}: row out of range 0..{len(self) - 1}")
            # runs of consecutive rows: one read each, straight into the result
            starts = np.concatenate([[0], np.flatnonzero(np.diff(idx) != 1) + 1])
            ends, rb, into = np.append(starts[1:], len(idx)), self.row_bytes, memoryview(out.reshape(-1).view(np.uint8))
            for a, b, row in zip(starts.tolist(), ends.tolist(), idx[starts].tolist()):
                if os.preadv(fd, [into[a * rb:b * rb]], self.offset + row * rb) != (b - a) * rb:
                    raise ValueError(f"{self.path} is shorter than its header says (truncated)")
            return out
        finally:
            os.close(fd)
