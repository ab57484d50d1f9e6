"""Users' own data, read lazily: an image folder, arrays on disk (``.npy``, read by rows), an ``.npz``
(small data), or a Python factory ``module:function``.

All are registered datasets configured through ``data.path``, ``data.options`` (what is particular
to the source) and ``[data.preprocess]`` (resize, channels, scale, mean/std: the one place
preprocessing is said, recorded in the bundle):

- ``image-folder``: ``data.path`` holds one sub-folder per class (sorted names are the labels), or
  ``train/``, ``test/`` (and optionally ``val/``) folders that each hold them. Files are listed up
  front and decoded one sample at a time when a batch is read (Pillow), resized to
  ``preprocess.size`` (default: the first image's size).
- ``npy``: ``data.path`` is a folder with ``x.npy`` + ``y.npy`` (split by the recipe's fractions)
  or ``x_train.npy``/``y_train.npy``/``x_test.npy``/``y_test.npy`` (optionally ``x_val``/``y_val``);
  inputs are read a batch of rows at a time by positioned reads (:class:`NpyRows`), so only the
  batches read come into memory.
- ``npz``: the same arrays in one ``.npz`` (loaded whole: keep it for small data). Option ``labels``.
- ``factory``: ``data.options.factory = "pkg.mod:fn"``; ``fn(cfg, seed, **other options)`` returns
  ``Splits``, arrays ``(x, y)`` / ``(x_train, y_train, x_test, y_test)``, or map-style datasets
  (``dataset[i] -> (x, y)``; one, or ``(train, test)``) read a sample at a time.

``preprocess.mean``/``std`` = ``"auto"`` are measured on up to ``preprocess.stats_samples`` training
samples in one streaming pass (:func:`edgedistill.data.core.channel_stats`).
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..user_code import import_object
from .core import DATASETS, ArraySplit, Preprocess, SampleSet, Splits, cap, channel_stats, check_options, split_indices
from .npy_rows import NpyRows

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLIT_DIRS = ("train", "val", "test")


def need_path(cfg, dataset: str, what: str) -> Path:
    if not cfg.path:
        raise ConfigError(f"data.path: dataset {dataset!r} needs a path to {what}; set data.path.")
    path = Path(cfg.path)
    if not path.exists():
        raise DataError(f"data.path: {path} does not exist; check the path.")
    return path


def check_labels(y, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))):
        raise DataError(f"{where}: labels must be a 1-D array of integers (-1 = unlabelled), got {y.dtype} {y.shape}.")
    return y.astype(np.int64)


def _check_inputs(x, n: int, where: str):
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{where}: inputs have dtype {x.dtype}; provide numeric arrays.")
    if x.ndim < 2:
        raise DataError(f"{where}: inputs have shape {x.shape}; expected N x features or N x C x H x W.")
    if len(x) != n:
        raise DataError(f"{where}: {len(x)} inputs but {n} labels; they must match.")
    return x


def resolve_preprocess(cfg, train: SampleSet, pre: Preprocess, seed: int, fixed: tuple | None = None) -> None:
    """Fill ``pre`` (shared by every split of a source) from ``[data.preprocess]``: a given scale, and
    mean/std given, measured on the training split (``"auto"``), or ``fixed`` (a dataset's own constants)."""
    p = cfg.preprocess
    if p.scale is not None:
        pre.scale = p.scale
    if p.mean == "none":
        if p.std not in ("none", "auto"):
            raise ConfigError("data.preprocess.std: given without a mean; set data.preprocess.mean too.")
        return
    if isinstance(p.mean, list) or isinstance(p.std, list):
        if not (isinstance(p.mean, list) and isinstance(p.std, list)):
            raise ConfigError("data.preprocess: give both mean and std as lists, or set both to \"auto\".")
        channels = train.input_shape[0]  # per channel (C x H x W) or per feature (D)
        for key, v in (("mean", p.mean), ("std", p.std)):
            if len(v) not in (1, channels):
                raise ConfigError(f"data.preprocess.{key}: {len(v)} values for {channels} channels; give 1 or {channels}.")
        if any(s <= 0 for s in p.std):
            raise ConfigError("data.preprocess.std: every value must be > 0.")
        pre.mean, pre.std = list(p.mean), list(p.std)
        return
    if fixed is not None and p.scale is None:
        pre.mean, pre.std = list(fixed[0]), list(fixed[1])
        return
    pre.mean, pre.std = None, None
    pre.mean, pre.std = channel_stats(train, p.stats_samples, seed)


def make_splits(cfg, seed, name: str, parts: dict[str, SampleSet], pre: Preprocess, labels: list[str] | None,
            fixed: tuple | None = None) -> Splits:
    """Split one set by the recipe's fractions (or take the given train/val/test), resolve the
    preprocessing on the training split, and wrap it as ``Splits``."""
    if "test" not in parts:
        tr, va, te = split_indices(parts["all"].y, cfg, seed)
        base = parts.pop("all")
        parts = {"train": base.subset(tr), "val": base.subset(va), "test": base.subset(te)}
    if "val" not in parts:
        parts["val"] = parts["train"].subset(np.zeros(0, dtype=np.int64))
    # the caps first: "auto" statistics read only the samples the run keeps
    parts["train"], parts["test"] = cap(parts["train"], cfg.max_train_samples, seed), cap(parts["test"], cfg.max_test_samples, seed)
    resolve_preprocess(cfg, parts["train"], pre, seed, fixed)
    if labels is not None and not all(isinstance(v, str) for v in labels):
        raise ConfigError("data.options.labels: must be a list of class names (strings).")
    top = max((int(p.y.max()) for p in parts.values() if len(p)), default=-1)
    k = len(labels) if labels else max(top + 1, 1)
    return Splits(train=parts["train"], val=parts["val"], test=parts["test"], num_classes=k,
                  input_shape=tuple(parts["train"].input_shape),
                  labels=list(labels) if labels else [str(i) for i in range(k)], normalization=pre.record(), name=name)


def _array_parts(arrays: dict, where: str, pre: Preprocess, fp: str | None, suffix: str = "",
                 unlabelled_ok: bool = False) -> dict[str, SampleSet]:
    """``x``/``y`` or ``x_train``/``y_train``/``x_test``/``y_test`` (+ ``x_val``/``y_val``) as SampleSets;
    with ``unlabelled_ok`` a lone ``x`` is unlabelled samples (labels -1: calibration only)."""
    if "x_train" in arrays:
        need = ["x_train", "y_train", "x_test", "y_test"]
        missing = [k for k in need if k not in arrays]
        if missing:
            raise DataError(f"{where}: has x_train but lacks {', '.join(missing)}; save all four arrays.")
        names = [s for s in SPLIT_DIRS if f"x_{s}" in arrays]
    elif "x" in arrays and ("y" in arrays or unlabelled_ok):
        names = ["all"]
    else:
        raise DataError(f"{where}: holds arrays {sorted(arrays)}; expected x and y, or x_train/y_train/x_test/y_test.")
    parts = {}
    for s in names:
        xk, yk = ("x", "y") if s == "all" else (f"x_{s}", f"y_{s}")
        if yk not in arrays and not (unlabelled_ok and s == "all"):
            raise DataError(f"{where}: has {xk} but lacks {yk}; save the labels beside the inputs.")
        label = str(Path(where) / f"{xk}{suffix}") if suffix else f"{where} ({xk})"  # errors name the file
        y = check_labels(arrays[yk], label) if yk in arrays else np.full(len(arrays[xk]), -1, np.int64)
        x = _check_inputs(arrays[xk], len(y), label)
        parts[s] = ArraySplit(x, y, pre, source=label, fingerprint=None if fp is None else f"{fp}|{s}")
    return parts


@DATASETS.register("npz", help="arrays from an .npz file: x/y, or x_train/y_train/x_test/y_test (data.path); loaded whole; "
                             "options.unlabelled = true reads a lone x as unlabelled samples")
def npz(cfg, seed: int) -> Splits:
    opts = check_options(cfg, "npz", {"labels", "unlabelled"})
    path = need_path(cfg, "npz", "an .npz file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise DataError(f"data.path: {path} is not a readable .npz without pickled objects ({e}); save it with np.savez.") from None
    pre = Preprocess()
    parts = _array_parts(arrays, str(path), pre, file_fingerprint([path]), unlabelled_ok=bool(opts.get("unlabelled")))
    return make_splits(cfg, seed, "npz", parts, pre, opts.get("labels"))


@DATASETS.register("npy", help="a folder of .npy arrays (x.npy + y.npy, or x_train.npy ... y_test.npy), read by rows; "
                             "options.unlabelled = true reads a lone x.npy as unlabelled samples")
def npy(cfg, seed: int) -> Splits:
    opts = check_options(cfg, "npy", {"labels", "unlabelled"})
    root = need_path(cfg, "npy", "a folder holding x.npy and y.npy (or x_train.npy, y_train.npy, x_test.npy, y_test.npy)")
    if not root.is_dir():
        raise DataError(f"data.path: {root} is a file; pass the folder that holds x.npy and y.npy.")
    files = sorted(root.glob("*.npy"))
    arrays = {}
    for f in files:
        try:  # inputs stay on disk, read a batch of rows at a time; labels are small
            arrays[f.stem] = NpyRows(f) if f.stem.startswith("x") else np.load(f, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{f}: not a readable .npy array ({str(e).splitlines()[0][:120]}); save it with np.save.") from None
    pre = Preprocess()
    parts = _array_parts(arrays, str(root), pre, file_fingerprint(files), suffix=".npy", unlabelled_ok=bool(opts.get("unlabelled")))
    return make_splits(cfg, seed, "npy", parts, pre, opts.get("labels"))


def file_fingerprint(files: list[Path], root: Path | None = None) -> str:
    """Paths, sizes and modification times: a replaced file changes it, without reading the bytes."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root) if root else f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def decode_image(im, size: tuple[int, int], channels: str) -> np.ndarray:
    """A PIL image as uint8 C x H x W: converted to ``channels`` (L, RGB or BGR), resized to ``size`` (H, W)."""
    from PIL import Image

    im = im.convert("L" if channels == "L" else "RGB")
    if (im.height, im.width) != tuple(size):
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    arr = np.asarray(im)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return arr[::-1] if channels == "BGR" else arr


class ImageFiles(SampleSet):
    """Image files decoded one at a time when read: converted to ``channels``, resized to ``size``
    (H, W), as uint8 C x H x W."""

    decodes = True

    def __init__(self, files: list[Path], y: np.ndarray, size: tuple[int, int], channels: str, pre: Preprocess,
                 fingerprint: str) -> None:
        # one numpy buffer of names, not a list of Path objects: DataLoader workers fork this object, and the
        # reference counts of 64k Python objects would copy their pages into every worker
        self.files, self.y = np.asarray([str(f) for f in files]), y
        self.size, self.channels, self.preprocess, self._fp = size, channels, pre, fingerprint
        self.input_shape = (1 if channels == "L" else 3, *size)

    def _read(self, idx: np.ndarray) -> np.ndarray:
        from PIL import Image

        out = np.empty((len(idx), *self.input_shape), dtype=np.uint8)
        for j, i in enumerate(idx):
            file = str(self.files[i])
            try:
                with Image.open(file) as im:
                    out[j] = decode_image(im, self.size, self.channels)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                raise DataError(f"{file}: cannot be read as an image ({e}); remove or replace it.") from None
        return out

    def where(self, i: int) -> str:
        return f"{self.files[i]} (sample {i})"

    def _fingerprint(self) -> str:
        return f"{self._fp}|{self.size}|{self.channels}"


def _class_files(folder: Path, classes: list[str] | None) -> tuple[list[Path], np.ndarray, list[str]]:
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(f"{folder}: class folder(s) {extra} are not in train/; every split must use the "
                            "training classes.")
    files, labels = [], []
    for label, cls in enumerate(classes):
        d = folder / cls
        if not d.is_dir():
            continue
        for f in sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            files.append(f)
            labels.append(label)
    return files, np.asarray(labels, dtype=np.int64), classes


@DATASETS.register("image-folder", help="images in one sub-folder per class, or train/ val/ test/ folders of them (data.path); needs Pillow")
def image_folder(cfg, seed: int) -> Splits:
    check_options(cfg, "image-folder", set())
    root = need_path(cfg, "image-folder", "a folder with one sub-folder per class")
    try:
        from PIL import Image
    except ImportError:
        raise DataError("dataset 'image-folder' needs Pillow; run `pip install pillow`.") from None
    p = cfg.preprocess
    channels = p.channels or "RGB"
    split_dirs = [s for s in SPLIT_DIRS if (root / s).is_dir()]
    if split_dirs and not {"train", "test"} <= set(split_dirs):
        raise DataError(f"data.path: {root} has {', '.join(split_dirs)}/ but not both train/ and test/; add the "
                        "missing one or put the class folders directly under data.path.")
    listed: dict[str, tuple] = {}
    classes = None
    for s in split_dirs or ["all"]:
        files, y, classes = _class_files(root if s == "all" else root / s, classes)
        listed[s] = (files, y)
    if not classes:
        raise DataError(f"data.path: {root} has no sub-folders; put each class's images in its own sub-folder.")
    every = [f for files, _ in listed.values() for f in files]
    if not every:
        raise DataError(f"data.path: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}'s class folders.")
    size = tuple(p.size) if p.size else None
    if size is None:
        try:
            with Image.open(every[0]) as im:  # the header only: nothing is decoded
                size = (im.height, im.width)
        except (OSError, ValueError) as e:
            raise DataError(f"{every[0]}: cannot be read as an image ({e}); remove or replace it.") from None
    pre = Preprocess(scale=1 / 255.0, extra={"size": list(size), "channels": channels, "layout": "NCHW"})
    fp = file_fingerprint(every, root)
    parts = {s: ImageFiles(files, y, size, channels, pre, f"{fp}|{s}") for s, (files, y) in listed.items()}
    return make_splits(cfg, seed, "image-folder", parts, pre, classes)


class DatasetSamples(SampleSet):
    """A user's map-style dataset (``dataset[i] -> (x, y)``, e.g. a ``torch.utils.data.Dataset``) read a
    sample at a time. Labels come from its ``targets`` or ``labels`` attribute when it has one, else
    from one pass over the samples (keeping only the labels)."""

    decodes = True
    repeatable = False  # its __getitem__ may augment: "auto" never caches it

    def __init__(self, dataset, where: str, pre: Preprocess) -> None:
        self.dataset, self.source, self.preprocess = dataset, where, pre
        try:
            n = len(dataset)
        except TypeError:
            raise DataError(f"{where}: the dataset has no len(); return a map-style dataset (with __len__ and "
                            "__getitem__).") from None
        if n == 0:
            raise DataError(f"{where}: the dataset is empty; return one with samples.")
        first = self._sample(0)
        self.input_shape = tuple(int(d) for d in first.shape)
        known = getattr(dataset, "targets", None)
        if known is None:
            known = getattr(dataset, "labels", None)
        if known is not None and len(known) == n:
            self.y = check_labels(np.asarray(known), f"{where} (targets)")
        else:
            self.y = check_labels(np.asarray([self._label(i) for i in range(n)]), f"{where} (labels)")

    def _item(self, i: int):
        item = self.dataset[int(i)]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DataError(f"{self.source}: item {i} is {type(item).__name__}; dataset[i] must return (x, y).")
        return item

    def _sample(self, i: int) -> np.ndarray:
        x = self._item(i)[0]
        x = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise DataError(f"{self.source}: item {i} has inputs of dtype {x.dtype}; return numeric inputs.")
        return x

    def _label(self, i: int) -> int:
        y = self._item(i)[1]
        return int(y.item() if hasattr(y, "item") else y)

    def _read(self, idx: np.ndarray) -> np.ndarray:
        out = np.zeros((len(idx), *self.input_shape), np.float32)
        for j, i in enumerate(idx):
            x = self._sample(i)
            if x.shape != self.input_shape:
                raise DataError(f"{self.where(int(i))}: has inputs of shape {x.shape}, expected {self.input_shape} (the "
                                "first item's); make every sample the same shape.")
            out[j] = x
        return out

    def where(self, i: int) -> str:
        return f"{self.source} item {i}"

    def _fingerprint(self) -> str:
        h = hashlib.sha256(f"{type(self.dataset).__qualname__}|{len(self)}".encode())
        h.update(self.y.tobytes())
        for i in np.linspace(0, len(self) - 1, num=min(len(self), 16)).astype(int):  # a sample of the contents
            h.update(np.ascontiguousarray(self._sample(i)).tobytes())
        return h.hexdigest()


def _is_dataset(obj) -> bool:
    return hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and not isinstance(obj, (np.ndarray, list, tuple))


@DATASETS.register("factory", help="a Python function 'module:function' (data.options.factory) returning Splits, arrays or datasets")
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
    pre = Preprocess()
    if _is_dataset(result):
        return make_splits(cfg, seed, "factory", {"all": DatasetSamples(result, where, pre)}, pre, None)
    if isinstance(result, tuple) and len(result) in (2, 3) and all(_is_dataset(r) for r in result):
        names = ("train", "test") if len(result) == 2 else SPLIT_DIRS
        parts = {s: DatasetSamples(r, f"{where} ({s})", pre) for s, r in zip(names, result)}
        return make_splits(cfg, seed, "factory", parts, pre, None)
    if isinstance(result, tuple) and len(result) in (2, 4):
        keys = ("x", "y") if len(result) == 2 else ("x_train", "y_train", "x_test", "y_test")
        arrays = dict(zip(keys, result))  # in memory already: fingerprinted by content when needed
        return make_splits(cfg, seed, "factory", _array_parts(arrays, where, pre, None), pre, None)
    raise DataError(f"{where}: returned {type(result).__name__}; return Splits, (x, y), "
                    "(x_train, y_train, x_test, y_test), or map-style datasets.")
