"""Datasets as plain arrays: train / val / test splits, normalisation and labels.

Every dataset is a registered factory ``(cfg: DataConfig, seed: int) -> Splits``; built-ins
(``digits``) load exactly like users' own.
"""

from __future__ import annotations

from .core import DATASETS, ArraySplit, Splits, load_data

from . import builtin as _builtin  # noqa: F401  (registers the built-in datasets)

__all__ = ["DATASETS", "ArraySplit", "Splits", "load_data"]
