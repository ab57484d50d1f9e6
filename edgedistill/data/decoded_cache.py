"""Decoded once, read as bytes after (``data.cache_decoded``): a decoding source's samples (image files,
``datasets`` image columns) written in one ordered pass to a raw ``.npy`` and read back by rows."""

from __future__ import annotations

import hashlib
from typing import Callable, Optional

import numpy as np

from .npy_rows import NpyRows
from .core import SampleSet, Splits
from .loader import auto_workers


def cache_splits(splits: Splits, cfg, folder=None, log: Callable[[str], None] | None = None) -> Splits:
    """``splits`` with each decoding split read from its decoded copy in ``folder`` as ``data.cache_decoded``
    says (``edgedistill run`` gives ``<run>/data_cache`` when a stage first reads data): ``"auto"`` keeps
    sources that read the same every time when they fit a quarter of the free disk space, only where a
    folder is given; ``true`` keeps any decoding source, by default under ``$EDGEDISTILL_CACHE/decoded``.
    Apply it after :func:`load_data` (after the caps: only the kept samples are decoded)."""
    if cfg.cache_decoded is True and folder is None:
        from ..text.assets import cache_dir

        folder = cache_dir() / "decoded"
    if cfg.cache_decoded is False or folder is None:
        return splits
    for name in ("train", "val", "test"):
        setattr(splits, name, cache_decoded(getattr(splits, name), folder, cfg.workers,
                                            auto=cfg.cache_decoded == "auto", split_name=name, log=log))
    return splits


class DecodedCache(SampleSet):
    """A decoding source's raw samples (e.g. images after decode and resize, uint8), written once in order to
    an ``.npy`` file and read back by rows (``data.cache_decoded``): later epochs read bytes instead of
    decoding again. Labels, preprocessing and error names are the source's."""

    def __init__(self, split: SampleSet, rows) -> None:
        self.split, self.rows = split, rows
        self.y, self.input_shape, self.preprocess = split.y, split.input_shape, split.preprocess

    def _read(self, idx: np.ndarray) -> np.ndarray:
        return self.rows[idx]

    def where(self, i: int) -> str:
        return self.split.where(i)

    def _fingerprint(self) -> str:
        return self.split._fingerprint()


class _RawChunks:
    """A split's raw samples, a sorted chunk per DataLoader item (so worker processes decode in parallel)."""

    def __init__(self, split: SampleSet, chunk: int) -> None:
        self.split, self.chunk = split, chunk

    def __len__(self) -> int:
        return -(-len(self.split) // self.chunk)

    def __getitem__(self, k: int):
        from ..errors import EdgeDistillError

        try:
            return self.split._read(np.arange(k * self.chunk, min((k + 1) * self.chunk, len(self.split))))
        except EdgeDistillError as e:  # raised in the main process as the one sentence it is
            return e


def _same(item):
    return item


AUTO_CACHE_SHARE = 0.25  # "auto" keeps decoded samples when they take at most this share of the free disk


def cache_decoded(split: SampleSet, folder, workers: Optional[int] = None, chunk: int = 256, auto: bool = False,
                  split_name: str = "", log: Callable[[str], None] | None = None) -> SampleSet:
    """``split`` read from ``<folder>/<fingerprint>.npy``, built on first use by one ordered pass (decoded in
    worker processes, written sequentially: memory holds a few chunks). Sources that do not decode are
    returned as they are; with ``auto`` also sources that may not read the same twice, and any whose raw
    bytes exceed :data:`AUTO_CACHE_SHARE` of the free space at ``folder``."""
    import os
    import shutil
    from pathlib import Path

    import torch

    from .. import _io

    if not split.decodes or len(split) == 0 or (auto and not split.repeatable):
        return split
    folder = Path(folder)
    path = folder / f"{hashlib.sha256(split._fingerprint().encode()).hexdigest()[:32]}.npy"
    if not path.is_file():
        first = split._read(np.zeros(1, dtype=np.int64))
        need = first.nbytes * len(split)
        if auto:
            existing = next(p for p in (folder, *folder.parents) if p.exists())
            free = shutil.disk_usage(existing).free
            if need > AUTO_CACHE_SHARE * free:
                if log:
                    log(f"data: {split_name} decoded every time it is read: its {len(split):,} decoded samples "
                        f"({need / 1e6:,.1f} MB) would take over a quarter of the {free / 1e9:,.1f} GB free at "
                        f"{existing}; free disk space or set data.cache_decoded = true to keep them anyway.")
                return split
        if log:
            log(f"data: decoding {len(split):,} {split_name} samples once into {path} ({need / 1e6:,.1f} MB; "
                "data.cache_decoded = false decodes them at every read instead)")
        n_workers = auto_workers(split, workers)
        loader = torch.utils.data.DataLoader(_RawChunks(split, chunk), batch_size=None, num_workers=n_workers,
                                             collate_fn=_same)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                header = {"descr": None, "fortran_order": False, "shape": (len(split), *split.input_shape)}
                for k, raw in enumerate(loader):
                    if isinstance(raw, Exception):
                        raise raw
                    if k == 0:
                        header["descr"] = np.lib.format.dtype_to_descr(raw.dtype)
                        np.lib.format.write_array_header_2_0(f, header)
                    f.write(np.ascontiguousarray(raw).tobytes())
                f.flush()
                os.fsync(f.fileno())

        _io.atomic_write(path, write)
    return DecodedCache(split, NpyRows(path))
