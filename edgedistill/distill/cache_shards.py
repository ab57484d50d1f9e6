"""The teacher cache's files: one folder per cache key, shard by shard, memory-mapped ``.npy`` files.

``<cache_dir>/teacher_<key>/`` holds ``meta.json`` (key, temperature, num_classes, k, dense, num_samples,
shard_size, the shard list) and, per shard ``i`` (samples ``i * shard_size ..``, the last one shorter):

* top-k caches: ``shard_{i:05d}.probs.npy`` fp16 ``[n, k]``, ``.indices.npy`` int16 / int32 ``[n, k]``,
  ``.fingerprints.npy`` fp32 ``[n]``;
* dense caches (a teacher's whole fp32 output per sample, e.g. embeddings): ``.outputs.npy`` fp32
  ``[n, d]`` and ``.fingerprints.npy``;
* ``shard_{i:05d}.done``: written (atomically) only after the shard's arrays are complete and flushed; it
  records their byte sizes. A shard without it, or whose files do not match it, is not done.

Arrays are written through ``np.lib.format.open_memmap`` (pages a writer has touched count in its RSS until
unmapped, so it hands them back every ``RELEASE_BYTES``, ``madvise(MADV_DONTNEED)``, :func:`release`; the data
stays in the file and the page cache) and read by rows with positioned reads (``NpyRows``, ``os.pread``): a
lookup of random rows through a memory map kept growing the RSS, as the kernel maps the pages around each one
it faults in (fault-around), and handing back only the rows' pages left those mapped; handing back whole
arrays bounded the RSS but made every lookup fault its pages in again. So the RSS of a build or of lookups is
bounded by a batch, not by the number of samples, and a lookup costs one read per run of consecutive rows.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Optional

import numpy as np

from .. import _io
from ..data.npy_rows import NpyRows
from ..errors import StageError

SHARD_SIZE = 1 << 20  # samples per shard (1,048,576): ~100 MB of fp16 top-50 probabilities
META = "meta.json"
FORMAT = "edgedistill-teacher-cache/1"
RELEASE_BYTES = 32 << 20  # a writer hands back its mapped pages after about this many bytes written


def shard_name(i: int) -> str:
    return f"shard_{i:05d}"


def spans(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    """``(start, count)`` of every shard."""
    return [(s, min(shard_size, num_samples - s)) for s in range(0, num_samples, shard_size)]


def layout(key: str, temperature: float, k: int, dense: bool, num_samples: int, shard_size: int,
           num_classes: int) -> dict:
    """The cache's ``meta.json`` (known once the teacher has answered one batch: its number of outputs)."""
    k_eff = num_classes if dense else min(k, num_classes)
    return {"format": FORMAT, "key": key, "temperature": float(temperature), "num_classes": int(num_classes),
            "k": int(k_eff), "dense": bool(dense),
            "index_dtype": "int16" if num_classes <= np.iinfo(np.int16).max else "int32",
            "num_samples": int(num_samples), "shard_size": int(shard_size),
            "shards": [{"name": shard_name(i), "start": s, "count": c}
                       for i, (s, c) in enumerate(spans(num_samples, shard_size))]}


def arrays_of(meta: dict, count: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each array of a shard of ``count`` samples: its shape and dtype."""
    k = meta["k"]
    if meta["dense"]:
        return {"outputs": ((count, k), np.dtype(np.float32)), "fingerprints": ((count,), np.dtype(np.float32))}
    return {"probs": ((count, k), np.dtype(np.float16)), "indices": ((count, k), np.dtype(meta["index_dtype"])),
            "fingerprints": ((count,), np.dtype(np.float32))}


def read_meta(folder: Path) -> Optional[dict]:
    path = Path(folder) / META
    if not path.is_file():
        return None
    try:
        meta = _io.read_json(path)
    except (OSError, ValueError):
        return None  # a torn or foreign file: the build writes it again
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def release(arr: np.ndarray) -> None:
    """Unmap the pages of a memory-mapped array from this process (they stay in the file / page cache)."""
    mm = getattr(arr, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)


def open_shard(folder: Path, meta: dict, i: int) -> dict[str, NpyRows]:
    """Shard ``i``'s arrays, read by rows; a StageError (one sentence naming the file) when it is
    not done, or its files are missing, truncated or of another shape / dtype than ``meta`` says."""
    folder = Path(folder)
    entry = meta["shards"][i]
    done = folder / f"{entry['name']}.done"
    fix = "re-run the build, which rebuilds the shards that are not done"
    if not done.is_file():
        raise StageError(f"teacher cache: shard {folder / entry['name']} is not built (no {done.name}); {fix} "
                         "(with several ranks, one of them may have failed).")
    try:
        sizes = _io.read_json(done)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise StageError(f"teacher cache: {done} is unreadable; delete it to rebuild the shard, or {fix}.") from None
    out = {}
    for name, (shape, dtype) in arrays_of(meta, entry["count"]).items():
        path = folder / f"{entry['name']}.{name}.npy"
        problem = _problem(path, shape, dtype, sizes.get(path.name))
        if isinstance(problem, str):
            raise StageError(f"teacher cache: {path} {problem}; delete it to rebuild it, or {fix}.")
        out[name] = problem
    return out


def _problem(path: Path, shape: tuple, dtype: np.dtype, size: Optional[int]):
    """The array at ``path``, read by rows, or what is wrong with it (a string)."""
    try:
        actual = path.stat().st_size
    except OSError:
        return "is missing"
    if size is not None and actual != size:
        return f"has {actual} bytes, {size} were written"
    try:
        arr = NpyRows(path)
    except (OSError, ValueError) as e:
        return f"is unreadable ({str(e)[:80]})"
    if arr.shape != shape or arr.dtype != dtype:
        return f"holds {arr.dtype} {arr.shape}, expected {dtype} {shape}"
    return arr


def shard_ok(folder: Path, meta: dict, i: int) -> bool:
    try:
        arrays = open_shard(folder, meta, i)
    except StageError:
        return False
    del arrays
    return True


class ShardWriter:
    """Writes rows at dataset positions into their shards' memory-mapped files; a shard whose rows have all
    been written is flushed, unmapped and marked done. Shards are opened when their first row comes."""

    def __init__(self, folder: Path, meta: dict, todo: list[int]) -> None:
        self.folder, self.meta = Path(folder), meta
        self.left = {i: meta["shards"][i]["count"] for i in todo}
        self.open: dict[int, dict[str, np.ndarray]] = {}
        self.unreleased = 0

    def _arrays(self, i: int) -> dict[str, np.ndarray]:
        if i not in self.open:
            name = self.meta["shards"][i]["name"]
            (self.folder / f"{name}.done").unlink(missing_ok=True)  # rewritten below: not done until finished
            self.open[i] = {a: np.lib.format.open_memmap(self.folder / f"{name}.{a}.npy", mode="w+", dtype=dt,
                                                         shape=shape)
                            for a, (shape, dt) in arrays_of(self.meta, self.meta["shards"][i]["count"]).items()}
        return self.open[i]

    def write(self, positions: np.ndarray, rows: dict[str, np.ndarray]) -> None:
        shard_of = positions // self.meta["shard_size"]
        for i in np.unique(shard_of):
            i, sel = int(i), shard_of == i
            at = positions[sel] - self.meta["shards"][i]["start"]
            arrays = self._arrays(i)
            for name, arr in arrays.items():
                arr[at] = rows[name][sel]
                self.unreleased += rows[name][sel].nbytes
            self.left[i] -= int(sel.sum())
            if self.left[i] == 0:
                self._finish(i)
        if self.unreleased > RELEASE_BYTES:  # dirty pages stay safe in the page cache, written back later
            for arrays in self.open.values():
                for arr in arrays.values():
                    release(arr)
            self.unreleased = 0

    def _finish(self, i: int) -> None:
        arrays = self.open.pop(i)
        for arr in arrays.values():
            arr.flush()  # the data on disk before the marker says so
        name = self.meta["shards"][i]["name"]
        files = {f"{name}.{a}.npy": os.path.getsize(self.folder / f"{name}.{a}.npy") for a in arrays}
        arrays.clear()  # unmapped
        _io.write_json(self.folder / f"{name}.done", {"files": files})
