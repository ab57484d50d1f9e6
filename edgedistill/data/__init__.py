"""Datasets as plain arrays: train / val / test splits, normalisation and labels.

Every dataset is a registered factory ``(cfg: DataConfig, seed: int) -> Splits``; built-ins
(``digits``) load exactly like users' own.
"""

from __future__ import annotations

from .core import DATASETS, ArraySplit, Splits, load_data

from . import adapters as _adapters, builtin as _builtin, fashion_mnist as _fashion_mnist  # noqa: F401  (register built-ins)

__all__ = ["DATASETS", "ArraySplit", "Splits", "load_data"]
