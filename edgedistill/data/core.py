"""The data contract: splits whose samples stay where they are and are read a batch at a time.

A :class:`SampleSet` knows every label up front (``y``, int64, -1 = unlabelled: labels are small)
and reads inputs on demand with ``read(indices)``: the source's raw samples, then the recipe's
:class:`Preprocess` (scale, then per-channel mean/std) applied to that batch alone, then checks
(shape, NaN/inf) that name the file and sample that fail. Nothing holds the whole data set: an
array source may be memory-mapped, an image folder is decoded per sample. ``__getitems__`` makes
a SampleSet a map-style dataset that ``torch.utils.data.DataLoader`` reads batch-wise
(:mod:`edgedistill.data.loader`).

Every dataset is a registered factory ``(cfg: DataConfig, seed: int) -> Splits``; built-ins load
exactly like users' own.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..registry import Registry


@dataclass
class Preprocess:
    """``(x * scale - mean) / std`` per channel (axis 1), applied to each batch as it is read."""

    scale: float = 1.0
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    extra: dict = field(default_factory=dict)  # what the source did before (resize, channel order), for the bundle

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32, copy=False)
        if self.scale != 1.0:
            x = x * np.float32(self.scale)
        if self.mean is not None:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            x = (x - np.asarray(self.mean, np.float32).reshape(shape)) / np.asarray(self.std, np.float32).reshape(shape)
        return x

    def record(self) -> dict:
        """What an app must do to a raw sample, as plain data (bundle metadata and model card)."""
        out = {**self.extra, "scale": float(self.scale)}
        if self.mean is not None:
            out.update(mean=[float(v) for v in self.mean], std=[float(v) for v in self.std])
        return out


class SampleSet:
    """One split: labels ``y`` known up front, inputs read a batch at a time (see the module docstring).

    Sources implement ``_read(sorted_indices) -> raw batch`` and ``where(i)``; ``decodes`` says that
    reading costs CPU (image decoding), so the loader uses worker processes by default; ``repeatable``
    that a sample reads the same every time (a file decoded, not a user's ``__getitem__`` that may
    augment), so ``data.cache_decoded = "auto"`` may keep the decoded bytes.
    """

    y: np.ndarray
    input_shape: tuple[int, ...]
    preprocess: Preprocess
    decodes: bool = False
    repeatable: bool = True
    #: ``_read`` gets its indices sorted (a file is read front to back) and ``read`` puts the batch back in the
    #: caller's order; a source that gathers as fast in any order says False and is read in the caller's order.
    sorted_reads: bool = True

    def __len__(self) -> int:
        return len(self.y)

    def _read(self, idx: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def where(self, i: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fingerprint(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identity of the samples and their preprocessing (the teacher cache's key), without reading them all."""
        return hashlib.sha256(f"{self._fingerprint()}|{self.preprocess.record()}".encode()).hexdigest()

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Inputs at ``indices`` (in that order), preprocessed float32 ``[B, *input_shape]``, checked."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"sample index out of range 0..{len(self) - 1}")
        order = np.argsort(idx, kind="stable") if self.sorted_reads else None
        read = idx if order is None else idx[order]
        x = self.preprocess.apply(self._read(read))
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise DataError(f"{self.where(int(read[0]))}: samples have shape {tuple(x.shape[1:])}, expected "
                            f"{tuple(self.input_shape)}; make every sample the same shape.")
        bad = ~np.isfinite(x).all(axis=tuple(range(1, x.ndim)))  # per sample; an empty batch has none
        if bad.any():
            raise DataError(f"{self.where(int(read[int(np.argmax(bad))]))}: contains NaN or inf; "
                            "clean or drop that sample.")
        if order is None:
            return x
        out = np.empty_like(x)
        out[order] = x
        return out

    def __getitems__(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        return self.read(idx), self.y[idx], idx

    def __getitem__(self, i: int):
        return self.__getitems__([int(i)])

    def subset(self, indices: np.ndarray) -> "SampleSet":
        return Subset(self, np.asarray(indices, dtype=np.int64))


class ArraySplit(SampleSet):
    """Inputs ``x`` (an array in memory or memory-mapped, N x C x H x W or N x D, any numeric dtype)
    and integer labels ``y`` (N,), -1 = unlabelled. ``source`` names the file in errors."""

    def __init__(self, x: np.ndarray, y: np.ndarray, preprocess: Preprocess | None = None, source: str = "arrays",
                 fingerprint: str | None = None) -> None:
        self.x, self.y = x, np.asarray(y, dtype=np.int64)
        self.preprocess = preprocess or Preprocess()
        self.input_shape = tuple(int(d) for d in x.shape[1:])
        self.source, self._fp = source, fingerprint
        # An array in memory is gathered in the caller's order, a copy at once; a memory map is read front to back.
        self.sorted_reads = not isinstance(x, np.ndarray) or isinstance(x, np.memmap)

    def _read(self, idx: np.ndarray) -> np.ndarray:
        # A contiguous run of a file (sorted, no repeated index): a slice, no gather. (In memory that would be a
        # view of the data, which ``read`` returns as it is: the gather copies.)
        if self.sorted_reads and len(idx) and idx[-1] - idx[0] + 1 == len(idx) and (np.diff(idx) == 1).all():
            return np.asarray(self.x[idx[0]:idx[-1] + 1])
        return np.asarray(self.x[idx])

    def where(self, i: int) -> str:
        return f"{self.source} sample {i}"

    def _fingerprint(self) -> str:
        if self._fp is not None:
            return self._fp
        h = hashlib.sha256(f"{self.x.shape}|{self.x.dtype}".encode())
        for start in range(0, len(self.x), 4096):  # bounded memory even for a memory-mapped array
            h.update(np.ascontiguousarray(self.x[start:start + 4096]).tobytes())
        h.update(self.y.tobytes())
        self._fp = h.hexdigest()
        return self._fp


class Subset(SampleSet):
    """The samples of ``base`` at ``indices`` (a split, or the kept ``max_train_samples``): the
    others are never read."""

    def __init__(self, base: SampleSet, indices: np.ndarray) -> None:
        self.base, self.indices = base, indices
        self.y = base.y[indices]
        self.input_shape, self.preprocess, self.decodes = base.input_shape, base.preprocess, base.decodes
        self.repeatable = base.repeatable

    def _read(self, idx: np.ndarray) -> np.ndarray:
        inner = self.indices[idx]
        order = np.argsort(inner, kind="stable")
        raw = self.base._read(inner[order])
        out = np.empty_like(raw)
        out[order] = raw
        return out

    def where(self, i: int) -> str:
        return self.base.where(int(self.indices[i]))

    def _fingerprint(self) -> str:
        return hashlib.sha256(self.base._fingerprint().encode() + self.indices.tobytes()).hexdigest()

    def subset(self, indices: np.ndarray) -> SampleSet:
        return Subset(self.base, self.indices[np.asarray(indices, dtype=np.int64)])


def as_samples(x: SampleSet | np.ndarray) -> SampleSet:
    """A SampleSet as it is; an array of inputs (already preprocessed) as an unlabelled one."""
    if isinstance(x, SampleSet):
        return x
    x = np.asarray(x) if not isinstance(x, np.ndarray) else x
    return ArraySplit(x, np.full(len(x), -1, dtype=np.int64))


@dataclass
class Splits:
    train: SampleSet
    val: SampleSet
    test: SampleSet
    num_classes: int
    input_shape: tuple[int, ...]
    labels: list[str] = field(default_factory=list)
    normalization: dict = field(default_factory=dict)  # the preprocessing applied (Preprocess.record())
    name: str = ""


DATASETS: Registry[Callable[..., Splits]] = Registry("dataset")


def check_splits(s: Splits, source: str) -> Splits:
    """Refuse, before any sample is decoded, data a run would mis-train on: empty splits, arrays with
    more or fewer inputs than labels, shapes that differ between splits, labels out of range. NaN/inf
    and per-sample shapes are checked as batches are read (:meth:`SampleSet.read`), naming the file
    and sample."""
    for split_name in ("train", "val", "test"):
        part: SampleSet = getattr(s, split_name)
        if split_name != "val" and len(part) == 0:
            raise DataError(f"{source}: the {split_name} split is empty; provide more samples or change the split fractions.")
        arrays = part.base if isinstance(part, Subset) else part
        if isinstance(arrays, ArraySplit) and len(arrays.x) != len(arrays.y):
            raise DataError(f"{source}: {split_name} has {len(arrays.x)} inputs but {len(arrays.y)} labels; they must match.")
        if len(part) == 0:
            continue
        if tuple(part.input_shape) != tuple(s.input_shape):
            raise DataError(f"{source}: {split_name} inputs have shape {tuple(part.input_shape)}, expected "
                            f"{tuple(s.input_shape)}; make every sample the same shape.")
        y = part.y
        bad = (y < -1) | (y >= s.num_classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{part.where(i)}: has label {int(y[i])}, outside 0..{s.num_classes - 1}; fix the labels "
                            "or the class names.")
    return s


def load_data(cfg, seed: int) -> Splits:
    """Build the recipe's dataset through the registry, cap it, and check it (without reading the samples)."""
    factory = DATASETS.get(cfg.dataset, "data.dataset")
    splits = factory(cfg, seed)
    splits.train, splits.test = cap(splits.train, cfg.max_train_samples, seed), cap(splits.test, cfg.max_test_samples, seed)
    return check_splits(splits, f"dataset {cfg.dataset!r}")


def cap(split: SampleSet, n: int | None, seed: int) -> SampleSet:
    """A seeded random ``n`` of ``split``'s samples, in file order (a class-ordered folder keeps every class);
    the others are never read. Sources apply it before measuring statistics; ``load_data`` again for
    splits a factory built itself."""
    if not n or n >= len(split):
        return split
    return split.subset(np.sort(np.random.default_rng(seed).permutation(len(split))[:n]))


def check_options(cfg, dataset: str, allowed: set[str]) -> dict:
    """``data.options`` as a dict, refusing keys the dataset does not take."""
    unknown = set(cfg.options) - allowed
    if unknown:
        raise ConfigError(f"data.options: unknown option(s) {sorted(unknown)} for {dataset!r}; valid: "
                          f"{', '.join(sorted(allowed)) or 'none'}.")
    return dict(cfg.options)


def split_indices(y: np.ndarray, cfg, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / val / test positions by the recipe's fractions, stratified by label when every class has
    enough samples (a seeded shuffle otherwise); deterministic in ``seed``. Only labels are read."""
    pos = np.arange(len(y))
    try:
        trv, te = stratified_split(y, cfg.test_fraction, seed)
        if cfg.val_fraction > 0:
            frac = cfg.val_fraction / (1.0 - cfg.test_fraction)
            tr, va = stratified_split(y[trv], frac, seed)
            tr, va = trv[tr], trv[va]
        else:
            tr, va = trv, pos[:0]
    except ValueError:  # too few samples per class to stratify
        order = np.random.default_rng(seed).permutation(len(y))
        n_te = max(1, int(round(len(y) * cfg.test_fraction)))
        n_va = int(round(len(y) * cfg.val_fraction))
        te, va, tr = order[:n_te], order[n_te:n_te + n_va], order[n_te + n_va:]
    return tr, va, te


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held out)`` positions of ``y``, ``ceil(fraction * len(y))`` held out, stratified by label: the
    positions scikit-learn's ``train_test_split(..., test_size=fraction, random_state=seed, stratify=y)`` gives
    (its StratifiedShuffleSplit, written out in numpy so the torch-free install needs no scikit-learn; a test
    compares the two). ValueError where it raises one (a class with one sample, too few samples)."""
    n = len(y)
    if not 0 < fraction < 1:
        raise ValueError(f"fraction {fraction} is not in (0, 1)")
    n_test = math.ceil(fraction * n)
    n_train = n - n_test
    classes, y_idx, counts = np.unique(y, return_inverse=True, return_counts=True)
    if n_train == 0 or counts.min() < 2 or n_train < len(classes) or n_test < len(classes):
        raise ValueError("too few samples per class to stratify")
    by_class = np.split(np.argsort(y_idx, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)  # scikit-learn's legacy generator, drawn in its order
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train, test = [], []
    for i in range(len(classes)):
        members = by_class[i].take(rng.permutation(counts[i]), mode="clip")
        train.extend(members[:n_i[i]])
        test.extend(members[n_i[i]:n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Per-class shares of ``draws`` proportional to ``counts``, the largest remainders rounded up (ties broken
    by ``rng``): scikit-learn's ``_approximate_mode``."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add = min(len(inds), need)
            floored[rng.choice(inds, size=add, replace=False)] += 1
            need -= add
            if need == 0:
                break
    return floored.astype(int)


def split_arrays(x: np.ndarray, y: np.ndarray, cfg, seed: int) -> tuple[ArraySplit, ArraySplit, ArraySplit]:
    """Stratified train / val / test split of in-memory arrays (deterministic in ``seed``)."""
    tr, va, te = split_indices(y, cfg, seed)
    return ArraySplit(x[tr], y[tr]), ArraySplit(x[va], y[va]), ArraySplit(x[te], y[te])


def channel_stats(split: SampleSet, max_samples: int, seed: int, batch_size: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (axis 1) of up to ``max_samples`` seeded samples of ``split`` after its
    scale, in one streaming pass: memory is one batch plus two running sums."""
    idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:max_samples])
    total = sq = None
    count = 0
    for start in range(0, len(idx), batch_size):
        x = split.read(idx[start:start + batch_size]).astype(np.float64)
        axes = (0,) + tuple(range(2, x.ndim))
        s, q = x.sum(axis=axes), (x * x).sum(axis=axes)
        total, sq = (s, q) if total is None else (total + s, sq + q)
        count += x.size // x.shape[1]
    if not count:
        raise DataError("data: no samples to compute the normalisation statistics from; add training samples.")
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean * mean, 0.0))
    std = np.where(std < 1e-8, 1.0, std)
    return [float(v) for v in mean], [float(v) for v in std]
