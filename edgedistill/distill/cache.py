"""Teacher soft-label cache: teacher outputs computed once, stored as top-k probabilities.

Each training sample keeps the teacher's ``k`` largest probabilities (at the distillation temperature
``T``) in fp16 with their class indices (int16 when the classes fit, else int32), plus one fp32
fingerprint of its input. The cache is keyed by a hash of the teacher, the data and the preprocessing,
so a second epoch or a second student never runs the teacher again; a changed teacher, dataset or
preprocessing gives a new key. Caching is refused when augmentation makes inputs differ between
epochs, and a lookup whose input no longer matches its fingerprint stops the run.

On lookup the full distribution is rebuilt with the remaining mass ``1 - sum(top-k)`` spread evenly over
the other classes and returned as logits ``T * log(p)``: ``softmax(logits / T)`` then gives back the
cached probabilities exactly, so KD / DKD at the same ``T`` see the teacher's top-k unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import _heap, _io
from ..data import SampleSet
from ..data.core import as_samples
from ..data.loader import batches
from ..errors import ConfigError, StageError


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


def _sample_fingerprints(x: torch.Tensor) -> torch.Tensor:
    """One fp32 number per sample: a fixed random projection of its input (changes when the input does)."""
    flat = x.detach().reshape(len(x), -1).float().cpu()
    return flat @ _projection(flat.shape[1])


@dataclass
class SoftLabelCache:
    key: str
    temperature: float
    num_classes: int
    probs: np.ndarray         # [N, k] float16: the teacher's top-k probabilities at T
    indices: np.ndarray       # [N, k] int16 / int32: their classes
    fingerprints: np.ndarray  # [N] float32
    dense: bool = False       # probs holds the teacher's whole output per sample (embeddings), fp32

    def __len__(self) -> int:
        return len(self.probs)

    @property
    def nbytes(self) -> int:
        return int(self.probs.nbytes + self.indices.nbytes + self.fingerprints.nbytes)

    def report(self) -> dict:
        if self.dense:
            return {"num_samples": len(self), "dim": int(self.probs.shape[1]), "dense": True, "cache_bytes": self.nbytes}
        return storage_report(len(self), self.num_classes, self.probs.shape[1])

    def teacher_outputs(self, index: torch.Tensor, x=None, device=None) -> dict[str, torch.Tensor]:
        """The teacher's ``{"logits": ...}`` for the samples at dataset positions ``index``.

        When ``x`` is a tensor batch, its fingerprints must match the cached ones, else the run stops (the
        inputs changed since the teacher saw them).
        """
        idx = index.detach().cpu().numpy()
        device = device or (x.device if isinstance(x, torch.Tensor) else torch.device("cpu"))
        if self.dense:  # the teacher's outputs as they were (embeddings): nothing to rebuild
            return {"logits": torch.from_numpy(self.probs[idx].astype(np.float32)).to(device)}
        if isinstance(x, torch.Tensor):
            now = _sample_fingerprints(x).numpy()
            then = self.fingerprints[idx]
            if not np.allclose(now, then, rtol=1e-4, atol=1e-3 * (1.0 + np.abs(then).max())):
                raise StageError(
                    "teacher cache: these inputs differ from the ones the teacher labelled (augmentation or "
                    "changed preprocessing?); turn the cache off or the augmentation off."
                )
        p_top = torch.from_numpy(self.probs[idx].astype(np.float32))
        cls = torch.from_numpy(self.indices[idx].astype(np.int64))
        k = p_top.shape[1]
        rest = (1.0 - p_top.sum(1, keepdim=True)).clamp_min(0.0)
        fill = (rest / max(self.num_classes - k, 1)).clamp_min(1e-8)
        p = fill.expand(len(idx), self.num_classes).clone()
        p.scatter_(1, cls, p_top.clamp_min(1e-8))
        p = p / p.sum(1, keepdim=True)
        return {"logits": (self.temperature * p.log()).to(device)}

    def save(self, path: str | Path) -> Path:
        """Written straight into the (atomically renamed) file: no in-memory copy of the arrays."""
        meta = np.array(json.dumps({"key": self.key, "temperature": self.temperature,
                                    "num_classes": self.num_classes, "dense": self.dense}))

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, probs=self.probs, indices=self.indices, fingerprints=self.fingerprints, meta=meta)

        return _io.atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> "SoftLabelCache":
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(meta["key"], float(meta["temperature"]), int(meta["num_classes"]),
                       z["probs"], z["indices"], z["fingerprints"], bool(meta.get("dense", False)))


@torch.no_grad()
def build_cache(teacher: Callable[[torch.Tensor], dict], split: SampleSet, *, key: str, temperature: float,
                k: int, batch_size: int = 256, device: str | torch.device = "cpu", dense: bool = False,
                log: Callable[[str], None] | None = None) -> SoftLabelCache:
    """Run ``teacher`` (``x -> {"logits": ...}``, already in eval mode) once over ``split``.

    ``dense`` keeps each sample's whole output in fp32 (embeddings, where top-k means nothing). Each
    batch's outputs go straight into arrays of the split's size, at the batch's positions (no per-batch
    list to concatenate). Texts (a split with ``lengths()``) are read shortest first, so a batch pads
    little; the heap's freed pages are handed back after every batch (see :mod:`edgedistill._heap`), or
    the batches' freed activations pile up in the RSS, growing with the number of batches."""
    if k < 1:
        raise ConfigError(f"distill.cache_top_k: {k} must be >= 1.")
    split = as_samples(split)
    lengths = getattr(split, "lengths", None)
    order = np.argsort(lengths(), kind="stable") if callable(lengths) else None
    n = len(split)
    probs = indices = fps = None
    num_classes, done, t0 = None, 0, time.perf_counter()
    for xb, _, pos in batches(split, batch_size, order):
        xb = xb.to(device) if isinstance(xb, torch.Tensor) else xb
        logits = teacher(xb)["logits"].float()
        num_classes = logits.shape[1]
        at = pos.numpy()
        if dense:
            if probs is None:
                probs = np.empty((n, num_classes), np.float32)
            probs[at] = logits.cpu().numpy()
        else:
            p = torch.softmax(logits / temperature, dim=1)
            top_p, top_i = p.topk(min(k, num_classes), dim=1)
            if probs is None:
                idx_dtype = np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32
                probs = np.empty((n, top_p.shape[1]), np.float16)
                indices, fps = np.empty((n, top_p.shape[1]), idx_dtype), np.empty(n, np.float32)
            probs[at] = top_p.cpu().numpy()
            indices[at] = top_i.cpu().numpy()
            fps[at] = _sample_fingerprints(xb).numpy()
            del p, top_p, top_i
        del logits, xb
        _heap.trim()
        done += len(at)
        if log is not None:
            log(f"teacher cache: {done}/{n} samples, {time.perf_counter() - t0:.0f}s")
    if num_classes is None:
        raise StageError("teacher cache: the training split is empty; nothing to cache.")
    if dense:
        return SoftLabelCache(key, float(temperature), int(num_classes), probs, np.zeros((n, 0), np.int16),
                              np.zeros(n, np.float32), dense=True)
    return SoftLabelCache(key, float(temperature), int(num_classes), probs, indices, fps)


def load_or_build(cache_dir: str | Path, teacher: Callable[[torch.Tensor], dict], teacher_fingerprint: str,
                  split: SampleSet, preprocessing: dict, *, temperature: float, k: int, augmented: bool = False,
                  batch_size: int = 256, device: str | torch.device = "cpu", dense: bool = False,
                  log: Callable[[str], None] | None = None) -> tuple[SoftLabelCache, bool]:
    """The cache for this teacher + data + preprocessing, read from ``cache_dir`` or built and saved there.

    Returns ``(cache, hit)``; ``hit`` is True when the teacher did not run.
    """
    refuse_if_augmented(augmented)
    split = as_samples(split)
    key = cache_key(teacher_fingerprint, split.fingerprint(), preprocessing, temperature, 0 if dense else k)
    path = Path(cache_dir) / f"teacher_{key}.npz"
    if path.exists():
        cache = SoftLabelCache.load(path)
        if cache.key == key and len(cache) == len(split):
            return cache, True
    cache = build_cache(teacher, split, key=key, temperature=temperature, k=k, batch_size=batch_size, device=device,
                        dense=dense, log=log)
    cache.save(path)
    return cache, False
