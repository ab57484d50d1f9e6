"""Fashion-MNIST (Zalando, 70,000 28x28 grayscale clothing images, 10 classes) read from IDX files.

The files come from the Debian package ``dataset-fashion-mnist`` (``apt-get install
dataset-fashion-mnist`` puts them in ``/usr/share/datasets/fashion-mnist``) or from any folder
given as ``data.path`` holding the four IDX files, gzipped or not. Nothing is downloaded.

The official 60,000 / 10,000 train / test split is kept (``data.test_fraction`` is not used);
``data.val_fraction`` of the training set is held out, stratified, as the validation split.
``data.options``: ``limit`` (int, keep only the first N train and N // 6 test images; for tests).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .core import DATASETS, ArraySplit, Preprocess, Splits, check_options, stratified_split

DEFAULT_DIRS = ("/usr/share/datasets/fashion-mnist",)
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Mean and std of the 60,000 training images scaled to [0, 1]; fixed so an app can preprocess the same way.
MEAN, STD = 0.2860, 0.3530
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into a numpy array of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read as an IDX file ({e}); re-copy or re-install it.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number); pass the original Fashion-MNIST files.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: holds {len(raw) - header} data bytes, its header says {expected}; the file is truncated.")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def find_files(folder: str | os.PathLike | None) -> dict[str, Path]:
    """Locate the four IDX files in ``folder`` (or the Debian package's folder), gzipped or not."""
    candidates = [Path(folder)] if folder else [Path(d) for d in DEFAULT_DIRS]
    for base in candidates:
        found = {}
        for key, stem in FILES.items():
            for name in (stem, stem + ".gz"):
                if (base / name).is_file():
                    found[key] = base / name
                    break
        if len(found) == len(FILES):
            return found
    if folder:
        missing = [stem for key, stem in FILES.items() if key not in found]
        raise DataError(
            f"data.path: {folder} lacks the Fashion-MNIST IDX files {', '.join(missing)} (gz or not); "
            "pass the folder that holds all four."
        )
    raise DataError(
        "dataset 'fashion-mnist': its IDX files are not installed; run `apt-get install dataset-fashion-mnist` "
        "(Debian/Ubuntu) or set data.path to a folder holding the four IDX files."
    )


def _images(path: Path) -> np.ndarray:
    x = read_idx(path)
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataError(f"{path}: images have shape {x.shape[1:]}, expected (28, 28); pass the Fashion-MNIST image files.")
    return x


def _labels(path: Path, n: int) -> np.ndarray:
    y = read_idx(path)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{path}: holds {y.shape} labels for {n} images; the image and label files do not match.")
    return y.astype(np.int64)


@DATASETS.register("fashion-mnist", help="Zalando Fashion-MNIST, 28x28 grayscale, 10 classes (Debian dataset-fashion-mnist)")
def fashion_mnist(cfg, seed: int) -> Splits:
    """The images stay uint8 in memory (47 MB for all 70,000) and are scaled and standardised a batch at a time."""
    from .adapters import make_splits

    limit = check_options(cfg, "fashion-mnist", {"limit"}).get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 10):
        raise ConfigError(f"data.options.limit: {limit!r} must be an integer >= 10.")
    files = find_files(cfg.path)
    x_tr = _images(files["train_x"])
    y_tr = _labels(files["train_y"], len(x_tr))
    x_te = _images(files["test_x"])
    y_te = _labels(files["test_y"], len(x_te))
    if limit is not None:
        x_tr, y_tr = x_tr[:limit], y_tr[:limit]
        x_te, y_te = x_te[: max(limit // 6, 10)], y_te[: max(limit // 6, 10)]
    pre = Preprocess(scale=1 / 255.0)
    fp = "|".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files.values()) + f"|{limit}"
    train = ArraySplit(x_tr[:, None], y_tr, pre, source=str(files["train_x"]), fingerprint=fp + "|train")
    parts = {"train": train, "test": ArraySplit(x_te[:, None], y_te, pre, source=str(files["test_x"]), fingerprint=fp + "|test")}
    if cfg.val_fraction > 0:  # a stratified part of the training set is held out for validation
        try:
            tr, va = stratified_split(y_tr, cfg.val_fraction, seed)
        except ValueError:  # too few images per class to stratify (a small limit): a seeded shuffle
            order = np.random.default_rng(seed).permutation(len(y_tr))
            n_va = max(1, int(round(len(y_tr) * cfg.val_fraction)))
            va, tr = order[:n_va], order[n_va:]
        parts.update(train=train.subset(tr), val=train.subset(va))
    return make_splits(cfg, seed, "fashion-mnist", parts, pre, list(LABELS), fixed=([MEAN], [STD]))
