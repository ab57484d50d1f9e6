"""Built-in datasets. ``digits`` (scikit-learn's embedded 8x8 handwritten digits) is the default."""

from __future__ import annotations

import numpy as np

from .core import DATASETS, Splits, split_arrays


@DATASETS.register("digits", help="scikit-learn's 1,797 8x8 handwritten digits (embedded, no download)")
def digits(cfg, seed: int) -> Splits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]  # N x 1 x 8 x 8 in [0, 1]
    mean, std = 0.3, 0.4  # fixed constants, recorded so an app can preprocess the same way
    x = (x - mean) / std
    y = d.target.astype(np.int64)
    train, val, test = split_arrays(x, y, cfg, seed)
    return Splits(
        train=train, val=val, test=test, num_classes=10, input_shape=(1, 8, 8),
        labels=[str(i) for i in range(10)],
        normalization={"scale": 1 / 16.0, "mean": [mean], "std": [std]}, name="digits",
    )
