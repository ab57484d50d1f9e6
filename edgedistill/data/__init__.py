"""Datasets: train / val / test splits whose samples are read a batch at a time, their preprocessing
and labels.

Every dataset is a registered factory ``(cfg: DataConfig, seed: int) -> Splits``; built-ins
(``digits``, ``fashion-mnist``) load exactly like users' own (image folders, ``.npy`` / ``.npz``
arrays, a Python factory).
"""

from __future__ import annotations

from .core import DATASETS, ArraySplit, Preprocess, SampleSet, Splits, as_samples, load_data
from .decoded_cache import cache_splits

from . import adapters as _adapters, builtin as _builtin, fashion_mnist as _fashion_mnist, text as _text, hf as _hf  # noqa: F401  (register built-ins)

__all__ = ["DATASETS", "ArraySplit", "Preprocess", "SampleSet", "Splits", "as_samples", "cache_splits", "load_data"]
