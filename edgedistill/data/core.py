"""The data contract every dataset factory returns, and the checks applied to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import ConfigError, DataError
from ..registry import Registry


@dataclass
class ArraySplit:
    """Inputs ``x`` (float32, N x C x H x W or N x D) and integer labels ``y`` (N,), -1 = unlabelled."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Splits:
    train: ArraySplit
    val: ArraySplit
    test: ArraySplit
    num_classes: int
    input_shape: tuple[int, ...]
    labels: list[str] = field(default_factory=list)
    normalization: dict = field(default_factory=dict)  # {"mean": [...], "std": [...]} applied already
    name: str = ""


DATASETS: Registry[Callable[..., Splits]] = Registry("dataset")


def check_splits(s: Splits, source: str) -> Splits:
    """Refuse data a run would silently mis-train on: NaN/inf, wrong shapes, bad labels, empty splits."""
    for split_name in ("train", "val", "test"):
        part: ArraySplit = getattr(s, split_name)
        if split_name != "val" and len(part) == 0:
            raise DataError(f"{source}: the {split_name} split is empty; provide more samples or change the split fractions.")
        if len(part.x) != len(part.y):
            raise DataError(f"{source}: {split_name} has {len(part.x)} inputs but {len(part.y)} labels; they must match.")
        if len(part) == 0:
            continue
        if tuple(part.x.shape[1:]) != tuple(s.input_shape):
            raise DataError(
                f"{source}: {split_name} inputs have shape {tuple(part.x.shape[1:])}, expected {tuple(s.input_shape)}; "
                "make every sample the same shape."
            )
        if np.issubdtype(part.x.dtype, np.floating) and not np.isfinite(part.x).all():
            raise DataError(f"{source}: {split_name} inputs contain NaN or inf; clean or drop those samples.")
        y = part.y
        labelled = y[y >= 0]
        if (y < -1).any() or (labelled >= s.num_classes).any():
            bad = int(y[(y < -1) | (y >= s.num_classes)][0])
            raise DataError(
                f"{source}: {split_name} has label {bad}, outside 0..{s.num_classes - 1}; fix the labels or num_classes."
            )
    return s


def load_data(cfg, seed: int) -> Splits:
    """Build the recipe's dataset through the registry and check it."""
    factory = DATASETS.get(cfg.dataset, "data.dataset")
    splits = factory(cfg, seed)
    splits = _cap(splits, cfg)
    return check_splits(splits, f"dataset {cfg.dataset!r}")


def _cap(s: Splits, cfg) -> Splits:
    if cfg.max_train_samples:
        s.train = ArraySplit(s.train.x[: cfg.max_train_samples], s.train.y[: cfg.max_train_samples])
    if cfg.max_test_samples:
        s.test = ArraySplit(s.test.x[: cfg.max_test_samples], s.test.y[: cfg.max_test_samples])
    return s


def check_options(cfg, dataset: str, allowed: set[str]) -> dict:
    """``data.options`` as a dict, refusing keys the dataset does not take."""
    unknown = set(cfg.options) - allowed
    if unknown:
        raise ConfigError(f"data.options: unknown option(s) {sorted(unknown)} for {dataset!r}; valid: {', '.join(sorted(allowed))}.")
    return dict(cfg.options)


def split_arrays(x: np.ndarray, y: np.ndarray, cfg, seed: int) -> tuple[ArraySplit, ArraySplit, ArraySplit]:
    """Stratified train / val / test split by the recipe's fractions (deterministic in ``seed``)."""
    from sklearn.model_selection import train_test_split

    x_trv, x_te, y_trv, y_te = train_test_split(x, y, test_size=cfg.test_fraction, random_state=seed, stratify=y)
    if cfg.val_fraction > 0:
        frac = cfg.val_fraction / (1.0 - cfg.test_fraction)
        x_tr, x_va, y_tr, y_va = train_test_split(x_trv, y_trv, test_size=frac, random_state=seed, stratify=y_trv)
    else:
        x_tr, y_tr = x_trv, y_trv
        x_va, y_va = x[:0], y[:0]
    return ArraySplit(x_tr, y_tr), ArraySplit(x_va, y_va), ArraySplit(x_te, y_te)
