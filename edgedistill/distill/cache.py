"""Teacher soft-label cache: teacher outputs computed once, stored shard by shard on disk.

Each training sample keeps the teacher's ``k`` largest probabilities (at the distillation temperature
``T``) in fp16 with their class indices (int16 when the classes fit, else int32), plus one fp32
fingerprint of its input; a dense cache (embeddings, ``dense=True``) keeps the teacher's whole fp32
output instead. The files (:mod:`.cache_shards`) are written shard by shard (``shard_size`` samples each)
as memory-mapped ``.npy`` arrays in ``<cache_dir>/teacher_<key>/`` and read by positioned reads: a lookup
reads only its batch's rows, and neither a build nor the lookups hold more than a batch in memory,
so 100 M samples cost disk, not RAM.

The key is a hash of the teacher's fingerprint, the data source's own fingerprint (never a hash of all
the inputs), the preprocessing, ``T`` and ``k``: a second epoch or a second student never runs the
teacher again; a changed teacher, dataset or preprocessing gives a new key. A build is resumable (a
shard is done only when its ``.done`` marker is written, after its arrays are complete; a re-run builds
only the others) and parallel (rank ``r`` of ``world`` builds the shards ``i % world == r``, then every
rank waits at ``barrier()`` and opens the whole cache, checking every shard). An ensemble of teachers is
cached per member (:func:`.teachers.cache_teacher`, :class:`.teachers.EnsembleCache`): changing its weights or
adding a teacher reuses the members already cached.

Caching is refused when augmentation makes inputs differ between epochs, and a lookup whose input no
longer matches its fingerprint stops the run. Fingerprints: a fixed random projection of a tensor input;
for texts, a 24-bit hash of each string (exact in fp32, compared exactly); other inputs are not checked
(NaN).

On lookup the full distribution is rebuilt with the remaining mass ``1 - sum(top-k)`` spread evenly over
the other classes and returned as logits ``T * log(p)``: ``softmax(logits / T)`` then gives back the
cached probabilities exactly, so KD / DKD at the same ``T`` see the teacher's top-k unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .. import _heap, _io
from ..data import SampleSet
from ..data.core import as_samples
from ..data.loader import batches
from ..errors import ConfigError, StageError
from . import cache_shards as shards
from .cache_shards import SHARD_SIZE

__all__ = ["SHARD_SIZE", "SoftLabelCache", "build_cache", "build_shards", "cache_key", "load_or_build",
           "open_cache", "refuse_if_augmented", "storage_report"]


def storage_report(num_samples: int, num_classes: int, k: int) -> dict:
    """Bytes of full fp32 logits vs the cache (fp16 probabilities, int indices, fp32 fingerprint)."""
    k = min(k, num_classes)
    index_bytes = 2 if num_classes <= np.iinfo(np.int16).max else 4
    full = num_samples * num_classes * 4
    cached = num_samples * (k * (2 + index_bytes) + 4)
    return {"num_samples": num_samples, "num_classes": num_classes, "k": k,
            "full_fp32_bytes": full, "cache_bytes": cached, "saved_fraction": 1.0 - cached / full}


def refuse_if_augmented(augmented: bool, where: str = "distill.cache") -> None:
    """Caching teacher outputs is only sound when every epoch sees the same inputs."""
    if augmented:
        raise ConfigError(
            f"{where}: the teacher cache is refused because data augmentation changes the inputs between "
            "epochs; turn augmentation off or set the cache off."
        )


def cache_key(teacher_fingerprint: str, data_fingerprint: str, preprocessing: dict, temperature: float, k: int) -> str:
    """The cache's identity: teacher, data, preprocessing, temperature and k."""
    blob = json.dumps({"teacher": teacher_fingerprint, "data": data_fingerprint, "pre": preprocessing,
                       "T": float(temperature), "k": int(k)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=8)
def _projection(dim: int) -> torch.Tensor:
    """The fixed random weights of :func:`_sample_fingerprints` (made once per input size, not per batch)."""
    return torch.rand(dim, generator=torch.Generator().manual_seed(1234)) + 0.5


def _is_texts(x) -> bool:
    return isinstance(x, (list, tuple)) and all(isinstance(s, str) for s in x)


def _sample_fingerprints(x) -> np.ndarray:
    """One fp32 number per sample that changes when its input does: a fixed random projection of a tensor
    (or array) input; for texts (a list of strings), a stable 24-bit hash of each string (exact in fp32);
    NaN (not checked) for any other kind of batch."""
    if _is_texts(x):
        return np.array([int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=3).digest(), "little")
                         for s in x], dtype=np.float32)
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if isinstance(x, torch.Tensor):
        flat = x.detach().reshape(len(x), -1).float().cpu()
        return (flat @ _projection(flat.shape[1])).numpy()
    return np.full(len(x), np.nan, dtype=np.float32)


def _check_inputs(x, then: np.ndarray) -> None:
    """Stop the run when the batch ``x`` is not what the teacher labelled (fingerprints ``then``)."""
    if x is None or np.isnan(then).any():
        return
    now = _sample_fingerprints(x)
    if _is_texts(x):
        same = np.array_equal(now, then)
    else:
        same = np.isfinite(now).all() and np.allclose(now, then, rtol=1e-4, atol=1e-3 * (1.0 + np.abs(then).max()))
    if not same:
        raise StageError(
            "teacher cache: these inputs differ from the ones the teacher labelled (augmentation or "
            "changed preprocessing?); turn the cache off or the augmentation off."
        )


class SoftLabelCache:
    """A built cache, opened from its folder (read by rows) (:func:`open_cache`); lookups by dataset position."""

    def __init__(self, folder: str | Path, meta: dict, arrays: list[dict[str, np.ndarray]]) -> None:
        self.folder, self.meta, self.arrays = Path(folder), meta, arrays
        self.key, self.temperature = meta["key"], float(meta["temperature"])
        self.num_classes, self.k, self.dense = int(meta["num_classes"]), int(meta["k"]), bool(meta["dense"])
        self.shard_size = int(meta["shard_size"])

    def __len__(self) -> int:
        return int(self.meta["num_samples"])

    @property
    def num_shards(self) -> int:
        return len(self.arrays)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for shard in self.arrays for a in shard.values()))

    def report(self) -> dict:
        """Sizes (``cache_bytes``: the arrays' bytes), the number of shards and their size."""
        more = {"shards": self.num_shards, "shard_size": self.shard_size}
        if self.dense:
            return {"num_samples": len(self), "dim": self.k, "dense": True, "cache_bytes": self.nbytes, **more}
        return {**storage_report(len(self), self.num_classes, self.k), **more}

    def rows(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """The stored arrays' rows at dataset positions ``index`` (only those rows are read); the pages
        touched are handed back afterwards, so the RSS does not grow with the lookups."""
        idx = index.detach().cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        idx = idx.astype(np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"teacher cache: position out of range 0..{len(self) - 1}")
        shard_of = idx // self.shard_size
        out = {name: np.empty((len(idx),) + a.shape[1:], a.dtype) for name, a in self.arrays[0].items()}
        for i in np.unique(shard_of):
            sel = shard_of == i
            at = idx[sel] - int(i) * self.shard_size
            order = np.argsort(at, kind="stable")  # sorted reads: the file in order, one read per run of rows
            for name, arr in self.arrays[int(i)].items():
                got = np.empty((len(at),) + arr.shape[1:], arr.dtype)
                got[order] = arr[at[order]]
                out[name][sel] = got
        return out

    def teacher_outputs(self, index: torch.Tensor, x=None, device=None, check: bool = True) -> dict[str, torch.Tensor]:
        """The teacher's ``{"logits": ...}`` for the samples at dataset positions ``index``.

        When ``x`` (the batch) is given and ``check``, its fingerprints must match the cached ones, else the
        run stops (the inputs changed since the teacher saw them).
        """
        got = self.rows(index)
        device = device or (x.device if isinstance(x, torch.Tensor) else torch.device("cpu"))
        if check:
            _check_inputs(x, got["fingerprints"])
        if self.dense:  # the teacher's outputs as they were (embeddings): nothing to rebuild
            return {"logits": torch.from_numpy(got["outputs"]).to(device)}
        p_top = torch.from_numpy(got["probs"].astype(np.float32))
        cls = torch.from_numpy(got["indices"].astype(np.int64))
        rest = (1.0 - p_top.sum(1, keepdim=True)).clamp_min(0.0)
        fill = (rest / max(self.num_classes - self.k, 1)).clamp_min(1e-8)
        p = fill.expand(len(p_top), self.num_classes).clone()
        p.scatter_(1, cls, p_top.clamp_min(1e-8))
        p = p / p.sum(1, keepdim=True)
        return {"logits": (self.temperature * p.log()).to(device)}

    def save(self, path: str | Path) -> Path:
        """A copy of the cache's folder at ``path`` (written beside it, then renamed into place)."""
        path = Path(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        shutil.copytree(self.folder, tmp, dirs_exist_ok=True)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SoftLabelCache":
        return open_cache(path)


def _rows(logits: torch.Tensor, xb, temperature: float, meta: dict) -> dict[str, np.ndarray]:
    """One batch of teacher logits as the arrays a shard stores."""
    fps = _sample_fingerprints(xb)
    if meta["dense"]:
        return {"outputs": logits.cpu().numpy(), "fingerprints": fps}
    top_p, top_i = torch.softmax(logits / temperature, dim=1).topk(meta["k"], dim=1)
    return {"probs": top_p.cpu().numpy().astype(np.float16), "indices": top_i.cpu().numpy().astype(meta["index_dtype"]),
            "fingerprints": fps}


def _resumable_meta(folder: Path, key: str, n: int, world: int) -> Optional[dict]:
    """The folder's ``meta.json`` when it is this cache's (its done shards can be kept); a stale folder (another
    key or sample count) is emptied by a single builder and refused with several (they would race)."""
    meta = shards.read_meta(folder)
    if meta is None or (meta["key"] == key and meta["num_samples"] == n):
        return meta
    if world > 1:
        raise StageError(f"teacher cache: {folder} holds another cache ({meta['num_samples']} samples, key "
                         f"{meta['key']}); delete the folder and run again.")
    shutil.rmtree(folder)
    return None


@torch.no_grad()
def build_shards(teacher: Callable[[torch.Tensor], dict], split: SampleSet, folder: str | Path, *, key: str,
                 temperature: float, k: int, dense: bool = False, shard_size: int = SHARD_SIZE,
                 batch_size: int = 256, device: str | torch.device = "cpu", rank: int = 0, world: int = 1,
                 log: Callable[[str], None] | None = None) -> list[int]:
    """Run ``teacher`` (``x -> {"logits": ...}``, in eval mode) over the shards of ``split`` this rank owns
    (``i % world == rank``) that are not done yet, writing them into ``folder``; returns the shards built.

    A folder started earlier keeps its shard size. Texts (a split with ``lengths()``) are read shortest
    first within each shard, so a batch pads little; the heap's freed pages are handed back after every
    batch (see :mod:`edgedistill._heap`)."""
    if k < 1:
        raise ConfigError(f"distill.cache_top_k: {k} must be >= 1.")
    if not 0 <= rank < world:
        raise ConfigError(f"teacher cache: rank {rank} is not in 0..{world - 1}.")
    split, folder = as_samples(split), Path(folder)
    n = len(split)
    if n == 0:
        raise StageError("teacher cache: the training split is empty; nothing to cache.")
    meta = _resumable_meta(folder, key, n, world)
    shard_size = int(meta["shard_size"]) if meta else int(shard_size)
    todo = [i for i in range(rank, len(shards.spans(n, shard_size)), world)
            if meta is None or not shards.shard_ok(folder, meta, i)]
    if not todo:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    writer, done, t0 = None, 0, time.perf_counter()
    for i in todo:  # one shard's positions at a time: nothing here grows with the number of samples
        for xb, _, pos in batches(split, batch_size, _order(split, shard_size, i)):
            xb = xb.to(device) if isinstance(xb, torch.Tensor) else xb
            logits = teacher(xb)["logits"].float()
            if writer is None:  # the layout is known once the teacher has answered: its number of outputs
                meta = shards.layout(key, temperature, k, dense, n, shard_size, logits.shape[1])
                _io.write_json(folder / shards.META, meta)  # the same from every rank: a rename, never torn
                writer = shards.ShardWriter(folder, meta, todo)
            writer.write(pos.numpy(), _rows(logits, xb, temperature, meta))
            del logits, xb
            _heap.trim()
            done += len(pos)
            if log is not None:
                log(f"teacher cache: {done} samples of {len(todo)} shard(s), {time.perf_counter() - t0:.0f}s")
    return todo


def _order(split: SampleSet, shard_size: int, i: int) -> np.ndarray:
    """Positions of shard ``i`` (texts shortest first)."""
    pos = np.arange(i * shard_size, min((i + 1) * shard_size, len(split)))
    lengths = getattr(split, "lengths", None)
    return pos if not callable(lengths) else pos[np.argsort(np.asarray(lengths())[pos], kind="stable")]


def open_cache(folder: str | Path) -> SoftLabelCache:
    """The cache in ``folder``, every shard opened and checked (a StageError names a missing or bad one)."""
    folder = Path(folder)
    meta = shards.read_meta(folder)
    if meta is None:
        raise StageError(f"teacher cache: {folder / shards.META} is missing or unreadable; re-run the build "
                         "(or delete the folder to start it again).")
    return SoftLabelCache(folder, meta, [shards.open_shard(folder, meta, i) for i in range(len(meta["shards"]))])


def build_cache(teacher: Callable[[torch.Tensor], dict], split: SampleSet, *, key: str, temperature: float,
                k: int, batch_size: int = 256, device: str | torch.device = "cpu", dense: bool = False,
                log: Callable[[str], None] | None = None, folder: str | Path | None = None,
                shard_size: int = SHARD_SIZE) -> SoftLabelCache:
    """Build (one process) and open a cache in ``folder``; without one, in a temporary folder deleted when
    the returned cache is (a caller that keeps it passes ``folder`` or calls ``save``)."""
    tmp = folder is None
    folder = Path(tempfile.mkdtemp(prefix="edgedistill-cache-")) if tmp else Path(folder)
    try:
        build_shards(teacher, split, folder, key=key, temperature=temperature, k=k, dense=dense, shard_size=shard_size,
                     batch_size=batch_size, device=device, log=log)
        cache = open_cache(folder)
    except BaseException:
        if tmp:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if tmp:
        weakref.finalize(cache, shutil.rmtree, folder, True)
    return cache


def load_or_build(cache_dir: str | Path, teacher: Callable[[torch.Tensor], dict], teacher_fingerprint: str,
                  split: SampleSet, preprocessing: dict, *, temperature: float, k: int, augmented: bool = False,
                  batch_size: int = 256, device: str | torch.device = "cpu", dense: bool = False,
                  log: Callable[[str], None] | None = None, shard_size: int = SHARD_SIZE, rank: int = 0,
                  world: int = 1, barrier: Callable[[], None] | None = None) -> tuple[SoftLabelCache, bool]:
    """The cache for this teacher + data + preprocessing in ``cache_dir/teacher_<key>/``: the shards of this
    rank that are not done are built (on ``device``), then ``barrier()`` (every rank's shards written), then
    the whole cache is opened and every shard checked.

    Returns ``(cache, hit)``; ``hit`` is True when this process did not run the teacher.
    """
    refuse_if_augmented(augmented)
    split = as_samples(split)
    key = cache_key(teacher_fingerprint, split.fingerprint(), preprocessing, temperature, 0 if dense else k)
    folder = Path(cache_dir) / f"teacher_{key}"
    built = build_shards(teacher, split, folder, key=key, temperature=temperature, k=k, dense=dense,
                         shard_size=shard_size, batch_size=batch_size, device=device, rank=rank, world=world, log=log)
    if barrier is not None:
        barrier()
    return open_cache(folder), not built
