"""Built-in datasets. ``digits`` (scikit-learn's embedded 8x8 handwritten digits) is the default."""

from __future__ import annotations

import numpy as np

from .adapters import make_splits
from .core import DATASETS, ArraySplit, Preprocess, Splits, check_options

MEAN, STD = 0.3, 0.4  # fixed constants for pixels scaled to [0, 1], recorded so an app can preprocess the same way


@DATASETS.register("digits", help="scikit-learn's 1,797 8x8 handwritten digits (embedded, no download)")
def digits(cfg, seed: int) -> Splits:
    from sklearn.datasets import load_digits

    check_options(cfg, "digits", set())
    d = load_digits()
    pre = Preprocess(scale=1 / 16.0)
    x = d.images.astype(np.uint8)[:, None, :, :]  # N x 1 x 8 x 8, values 0..16
    return make_splits(cfg, seed, "digits", {"all": ArraySplit(x, d.target, pre, source="digits", fingerprint="digits")},
                   pre, [str(i) for i in range(10)], fixed=([MEAN], [STD]))
