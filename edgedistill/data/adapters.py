"""Users' own data: arrays from ``.npz``, an image folder, or a Python factory ``module:function``.

All three are registered datasets configured through ``data.path`` and ``data.options``:

- ``npz``: ``data.path`` is an ``.npz`` holding ``x``/``y`` (split by the recipe's fractions) or
  ``x_train``/``y_train``/``x_test``/``y_test`` (optionally ``x_val``/``y_val``). Options:
  ``normalize`` (``"standard"``: per-channel mean/std of the training split, ``"none"``),
  ``scale`` (multiply first, e.g. ``1/255`` for uint8 images), ``labels`` (class names).
- ``image-folder``: ``data.path`` holds one sub-folder per class (sorted names are the labels).
  Options: ``size`` ([H, W] or an int, default: the first image's size), ``mode`` (``"L"``
  grayscale or ``"RGB"``, default ``"RGB"``), ``normalize``. Needs Pillow.
- ``factory``: ``data.options.factory = "pkg.mod:fn"``; ``fn(cfg, seed)`` returns ``Splits``, or a
  tuple ``(x, y)`` / ``(x_train, y_train, x_test, y_test)`` of arrays; other options are passed on as
  keyword arguments.

The normalisation applied is recorded in ``Splits.normalization`` so the bundle can carry it.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .core import DATASETS, ArraySplit, Splits, check_options, split_arrays

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _need_path(cfg, dataset: str, what: str) -> Path:
    if not cfg.path:
        raise ConfigError(f"data.path: dataset {dataset!r} needs a path to {what}; set data.path.")
    path = Path(cfg.path)
    if not path.exists():
        raise DataError(f"data.path: {path} does not exist; check the path.")
    return path


def _as_arrays(x, y, where: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{where}: inputs have dtype {x.dtype}; provide numeric arrays.")
    if x.ndim < 2:
        raise DataError(f"{where}: inputs have shape {x.shape}; expected N x features or N x C x H x W.")
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))):
        raise DataError(f"{where}: labels must be a 1-D array of integers (-1 = unlabelled), got {y.dtype} {y.shape}.")
    if len(x) != len(y):
        raise DataError(f"{where}: {len(x)} inputs but {len(y)} labels; they must match.")
    return x.astype(np.float32), y.astype(np.int64)


def _normalise(parts: list[np.ndarray], mode: str, scale: float, where: str) -> tuple[list[np.ndarray], dict]:
    """Scale, then standardise per channel with the first (training) part's statistics."""
    if mode not in ("standard", "none"):
        raise ConfigError(f"data.options.normalize: {mode!r} is not one of: standard, none.")
    parts = [p * np.float32(scale) for p in parts]
    record: dict = {"scale": float(scale)}
    if mode == "none" or len(parts[0]) == 0:
        return parts, record
    train = parts[0]
    axes = (0,) + tuple(range(2, train.ndim)) if train.ndim > 2 else (0,)
    mean = train.mean(axis=axes, dtype=np.float64)
    std = train.std(axis=axes, dtype=np.float64)
    std = np.where(std < 1e-8, 1.0, std)
    shape = (1, -1) + (1,) * (train.ndim - 2)
    m32, s32 = mean.astype(np.float32).reshape(shape), std.astype(np.float32).reshape(shape)
    record.update(mean=[float(v) for v in np.ravel(mean)], std=[float(v) for v in np.ravel(std)])
    return [(p - m32) / s32 for p in parts], record


def _num_classes(labels: list[str] | None, *ys: np.ndarray) -> int:
    """Given class names fix the count (labels beyond it are then refused); else the largest label + 1."""
    if labels:
        return len(labels)
    top = max((int(y.max()) for y in ys if len(y)), default=-1)
    return max(top + 1, 1)


def _build(name, cfg, seed, train, test, val=None, labels=None, normalize="standard", scale=1.0) -> Splits:
    """Split (when no test arrays are given), normalise and wrap arrays as ``Splits``."""
    if test is None:
        try:
            tr, va, te = split_arrays(*train, cfg, seed)
        except ValueError:  # too few samples per class to stratify
            tr, va, te = _plain_split(*train, cfg, seed)
    else:
        tr, te = ArraySplit(*train), ArraySplit(*test)
        va = ArraySplit(*val) if val is not None else ArraySplit(tr.x[:0], tr.y[:0])
    (xtr, xva, xte), record = _normalise([tr.x, va.x, te.x], normalize, scale, name)
    if labels is not None and not all(isinstance(v, str) for v in labels):
        raise ConfigError("data.options.labels: must be a list of class names (strings).")
    k = _num_classes(labels, tr.y, va.y, te.y)
    return Splits(
        train=ArraySplit(xtr, tr.y), val=ArraySplit(xva, va.y), test=ArraySplit(xte, te.y), num_classes=k,
        input_shape=tuple(int(d) for d in xtr.shape[1:]), labels=list(labels) if labels else [str(i) for i in range(k)],
        normalization=record, name=name,
    )


def _plain_split(x, y, cfg, seed):
    """Shuffled split for data too small (or too unbalanced) to stratify."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_te = max(1, int(round(len(x) * cfg.test_fraction)))
    n_va = int(round(len(x) * cfg.val_fraction))
    te, va, tr = order[:n_te], order[n_te:n_te + n_va], order[n_te + n_va:]
    return ArraySplit(x[tr], y[tr]), ArraySplit(x[va], y[va]), ArraySplit(x[te], y[te])


@DATASETS.register("npz", help="arrays from an .npz file: x/y, or x_train/y_train/x_test/y_test (data.path)")
def npz(cfg, seed: int) -> Splits:
    opts = check_options(cfg, "npz", {"normalize", "scale", "labels"})
    path = _need_path(cfg, "npz", "an .npz file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise DataError(f"data.path: {path} is not a readable .npz without pickled objects ({e}); save it with np.savez.") from None
    where = str(path)
    if "x_train" in arrays:
        need = ["x_train", "y_train", "x_test", "y_test"]
        missing = [k for k in need if k not in arrays]
        if missing:
            raise DataError(f"{where}: has x_train but lacks {', '.join(missing)}; save all four arrays.")
        val = _as_arrays(arrays["x_val"], arrays["y_val"], f"{where} (val)") if "x_val" in arrays else None
        train = _as_arrays(arrays["x_train"], arrays["y_train"], f"{where} (train)")
        test = _as_arrays(arrays["x_test"], arrays["y_test"], f"{where} (test)")
    elif "x" in arrays and "y" in arrays:
        train, test, val = _as_arrays(arrays["x"], arrays["y"], where), None, None
    else:
        raise DataError(f"{where}: holds arrays {sorted(arrays)}; expected x and y, or x_train/y_train/x_test/y_test.")
    return _build("npz", cfg, seed, train, test, val, opts.get("labels"), opts.get("normalize", "standard"),
                  float(opts.get("scale", 1.0)))


@DATASETS.register("image-folder", help="images in one sub-folder per class (data.path); needs Pillow")
def image_folder(cfg, seed: int) -> Splits:
    opts = check_options(cfg, "image-folder", {"size", "mode", "normalize"})
    root = _need_path(cfg, "image-folder", "a folder with one sub-folder per class")
    try:
        from PIL import Image
    except ImportError:
        raise DataError("dataset 'image-folder' needs Pillow; run `pip install pillow`.") from None
    mode = opts.get("mode", "RGB")
    if mode not in ("L", "RGB"):
        raise ConfigError(f"data.options.mode: {mode!r} is not one of: L, RGB.")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"data.path: {root} has no sub-folders; put each class's images in its own sub-folder.")
    size = opts.get("size")
    if isinstance(size, int):
        size = (size, size)
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for file in sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(file) as im:
                    im = im.convert(mode)
                    if size is None:
                        size = (im.height, im.width)
                    if (im.height, im.width) != tuple(size):
                        im = im.resize((size[1], size[0]), Image.BILINEAR)
                    arr = np.asarray(im, dtype=np.float32)
            except OSError as e:
                raise DataError(f"{file}: cannot be read as an image ({e}); remove or replace it.") from None
            xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise DataError(f"data.path: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}'s class folders.")
    x, y = np.stack(xs), np.asarray(ys, dtype=np.int64)
    return _build("image-folder", cfg, seed, (x, y), None, None, classes, opts.get("normalize", "standard"), 1 / 255.0)


def import_object(spec: str, key: str):
    """Import ``"pkg.module:attr"``; a bad spec is a ConfigError naming ``key``."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ConfigError(f"{key}: {spec!r} must look like 'package.module:function'.")
    mod_name, attr = spec.split(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"{key}: cannot import {mod_name!r} ({e}); check the module name and PYTHONPATH.") from None
    obj = getattr(module, attr, None)
    if obj is None or not callable(obj):
        raise ConfigError(f"{key}: {mod_name!r} has no callable {attr!r}.")
    return obj


@DATASETS.register("factory", help="a Python function 'module:function' (data.options.factory) returning Splits or arrays")
def factory(cfg, seed: int) -> Splits:
    opts = dict(cfg.options)
    spec = opts.pop("factory", None)
    if spec is None:
        raise ConfigError("data.options.factory: missing; set it to 'package.module:function'.")
    fn = import_object(spec, "data.options.factory")
    call_kwargs = {}
    params = inspect.signature(fn).parameters
    for name in ("cfg", "seed"):
        if name in params:
            call_kwargs[name] = cfg if name == "cfg" else seed
    try:
        result = fn(**call_kwargs, **opts)
    except TypeError as e:
        raise ConfigError(f"data.options: {spec} cannot be called with {sorted(opts)} ({e}).") from None
    where = f"data.options.factory {spec}"
    if isinstance(result, Splits):
        return result
    if isinstance(result, tuple) and len(result) == 2:
        return _build("factory", cfg, seed, _as_arrays(*result, where), None, normalize="none")
    if isinstance(result, tuple) and len(result) == 4:
        return _build("factory", cfg, seed, _as_arrays(*result[:2], where), _as_arrays(*result[2:], where), normalize="none")
    raise DataError(f"{where}: returned {type(result).__name__}; return Splits, (x, y) or (x_train, y_train, x_test, y_test).")
