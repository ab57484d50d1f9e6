"""A Hugging Face ``datasets`` source, ``hf-datasets`` (the optional ``hf`` extra: ``pip install
'edgedistill[hf]'``), read lazily from memory-mapped Arrow files.

``data.path`` is a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or a
local ``.csv``, ``.json`` / ``.jsonl`` or ``.parquet`` file (loaded with ``datasets.load_dataset``
into its Arrow cache; nothing is fetched from the hub). A DatasetDict's ``train``, ``validation``
(or ``val``) and ``test`` splits are used as they are; a single split is divided by the recipe's
fractions (only the labels are read for that).

``data.options``: ``input``, the column of the inputs (default ``"image"`` if there is one, else
``"x"``; a list of numeric columns makes one feature vector, e.g. a CSV's columns), ``label`` (default
``"label"``: integers, a ``ClassLabel`` or strings), ``labels`` (class names; default the
``ClassLabel``'s names, the sorted strings of a string column, or ``"0"``, ``"1"`` ...).

An ``Image()`` column is decoded a batch at a time like an image folder (``preprocess.channels``,
``preprocess.size``: default the first image's size; scale 1/255); a numeric column (arrays or
lists, the same shape in every row: C x H x W or D) is read as it is. ``[data.preprocess]`` applies
as for every source.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .adapters import check_labels, file_fingerprint, need_path, make_splits, decode_image
from .core import DATASETS, Preprocess, SampleSet, Splits, check_options

FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}


def _datasets():
    """The ``datasets`` package, imported on first use (the source is optional), offline."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only: never the hub
    try:
        import datasets
    except ImportError:
        raise DataError("dataset 'hf-datasets' needs the datasets package; run `pip install 'edgedistill[hf]'`.") from None
    return datasets


def _load(path: Path) -> dict:
    """``{split name: Dataset}`` from a save_to_disk folder or a local data file."""
    datasets = _datasets()
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except (OSError, ValueError) as e:
            raise DataError(f"data.path: {path} is not a folder written by Dataset.save_to_disk or "
                            f"DatasetDict.save_to_disk ({str(e).splitlines()[0][:160]}); save it with save_to_disk, "
                            "or pass a .csv, .json, .jsonl or .parquet file.") from None
    else:
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"data.path: {path} is not a folder written by save_to_disk nor a .csv, .json, .jsonl or "
                            ".parquet file; convert it to one of those.")
        try:
            loaded = datasets.load_dataset(builder, data_files=str(path))
        except Exception as e:  # the builders raise many kinds (ArrowInvalid, DatasetGenerationError ...)
            cause = e.__cause__ or e
            raise DataError(f"data.path: {path} cannot be read as {builder} ({type(cause).__name__}: "
                            f"{str(cause).splitlines()[0][:160] if str(cause) else ''}); fix the file.") from None
        return {"": loaded["train"]}  # one file: one split, named after the file alone
    if isinstance(loaded, datasets.Dataset):
        return {"": loaded}
    return dict(loaded)


def _image(v):
    """A decoded ``Image()`` value as a PIL image (an ``Image(decode=False)`` value is opened here)."""
    if v is None:
        raise ValueError("the row has no image")
    if isinstance(v, dict):  # bytes or a path
        from PIL import Image

        return Image.open(io.BytesIO(v["bytes"]) if v.get("bytes") else v["path"])
    return v


def _pick_splits(found: dict, path: Path) -> dict:
    """``{"train", "val", "test"}`` from a DatasetDict's own splits, or ``{"all"}`` for a single one."""
    if len(found) == 1:
        return {"all": next(iter(found.items()))}
    parts = {SPLIT_NAMES[k]: (k, d) for k, d in found.items() if k in SPLIT_NAMES}
    if not {"train", "test"} <= set(parts):
        raise DataError(f"data.path: {path} has splits {', '.join(sorted(found))} but not both train and test; save "
                        "train and test (and optionally validation) splits, or a single split to divide by the "
                        "recipe's fractions.")
    return parts


class HFSamples(SampleSet):
    """One split of a ``datasets.Dataset``: each batch is one Arrow read of the input column(s) at the
    batch's rows, images decoded to uint8 C x H x W, numeric values stacked as they are."""

    def __init__(self, ds, source: str, columns: list[str], y: np.ndarray, pre: Preprocess, image: bool,
                 size: tuple[int, int] | None, channels: str, fingerprint: str) -> None:
        self.source, self.columns, self.y, self.preprocess = source, columns, y, pre
        self.decodes, self.size, self.channels, self._fp = image, size, channels, fingerprint
        # Only the input columns, as PIL images (images) or numpy arrays (numbers).
        self.ds = ds.with_format(None if image else "numpy", columns=columns)
        if image:
            self.input_shape = (1 if channels == "L" else 3, *size)
        elif len(ds):
            self.input_shape = tuple(int(d) for d in self._read(np.zeros(1, dtype=np.int64)).shape[1:])
        else:
            self.input_shape = ()

    def _rows(self, idx: np.ndarray) -> dict:
        if len(idx) and idx[-1] - idx[0] + 1 == len(idx):  # a contiguous run: a slice
            return self.ds[int(idx[0]):int(idx[-1]) + 1]
        return self.ds[idx.tolist()]

    def _read(self, idx: np.ndarray) -> np.ndarray:
        if not len(idx):
            return np.zeros((0, *self.input_shape), np.uint8 if self.decodes else np.float32)
        if self.decodes:
            return self._read_images(idx)
        batch = self._rows(idx)
        cols = []
        for c in self.columns:
            a = np.asarray(batch[c])
            shapes = [np.shape(v) for v in a] if a.dtype == object else []
            j = next((k for k, s in enumerate(shapes) if s != shapes[0]), None)
            if j is not None:  # rows of different lengths
                raise DataError(f"{self.where(int(idx[j]))}: column {c!r} has shape {shapes[j]}, but row "
                                f"{int(idx[0])} has {shapes[0]}; make every sample the same shape.")
            if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
                raise DataError(f"{self.where(int(idx[0]))}: column {c!r} holds {a.dtype} values, not numbers; pick a "
                                "numeric or Image() column as data.options.input.")
            cols.append(a)
        if len(cols) == 1:
            return cols[0][:, None] if cols[0].ndim == 1 else cols[0]  # a scalar column: one feature
        return np.concatenate([a.reshape(len(a), -1) for a in cols], axis=1)

    def _read_images(self, idx: np.ndarray) -> np.ndarray:
        from PIL import Image

        errors = (OSError, ValueError, Image.DecompressionBombError)
        out = np.empty((len(idx), *self.input_shape), dtype=np.uint8)
        try:
            images = self._rows(idx)[self.columns[0]]
        except errors:  # datasets decodes the whole batch: find the row that fails
            images = None
        for j, i in enumerate(idx):
            try:
                im = images[j] if images is not None else self.ds[int(i)][self.columns[0]]
                out[j] = decode_image(_image(im), self.size, self.channels)
            except errors as e:
                raise DataError(f"{self.where(int(i))}: cannot be read as an image ({e}); remove or replace "
                                "it.") from None
        return out

    def where(self, i: int) -> str:
        return f"{self.source} row {i}"

    def _fingerprint(self) -> str:
        return f"{self._fp}|{self.columns}|{self.size}|{self.channels}"


def _label_column(parts: dict, label: str, names: list[str] | None, where: dict) -> tuple[dict, list[str] | None]:
    """Each split's labels as int64 (nulls: -1 = unlabelled) and the class names they index."""
    datasets = _datasets()
    import pyarrow as pa  # installed with datasets

    feature = next(iter(parts.values()))[1].features[label]
    if names is None and isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
    raw = {}
    for s, (_, ds) in parts.items():
        col = ds.with_format("arrow", columns=[label])[:].column(label)  # the labels only: small
        raw[s] = col
    strings = any(pa.types.is_string(c.type) or pa.types.is_large_string(c.type) for c in raw.values())
    if strings:
        values = {s: np.asarray(c.to_pylist(), dtype=object) for s, c in raw.items()}
        if names is None:
            names = sorted({v for a in values.values() for v in a if v is not None})
        index = {n: k for k, n in enumerate(names)}
        ys = {}
        for s, a in values.items():
            unknown = sorted({v for v in a if v is not None and v not in index})
            if unknown:
                raise DataError(f"{where[s]}: column {label!r} has label(s) {unknown[:5]} not in data.options.labels; "
                                "add them to the list.")
            ys[s] = np.asarray([-1 if v is None else index[v] for v in a], dtype=np.int64)
        return ys, names
    ys = {}
    for s, c in raw.items():
        a = c.to_numpy() if c.null_count == 0 else c.fill_null(-1).to_numpy()
        ys[s] = check_labels(a, f"{where[s]} column {label!r}")
    return ys, names


@DATASETS.register("hf-datasets", help="a Hugging Face datasets folder (save_to_disk) or a .csv/.json/.jsonl/.parquet "
                   "file (data.path), memory-mapped; needs the hf extra")
def hf_datasets(cfg, seed: int) -> Splits:
    opts = check_options(cfg, "hf-datasets", {"input", "label", "labels"})
    _datasets()  # the missing package is said before anything else
    path = need_path(cfg, "hf-datasets", "a folder written by save_to_disk, or a .csv, .json, .jsonl or .parquet file")
    parts = _pick_splits(_load(path), path)
    where = {s: f"{path} ({name})" if name else str(path) for s, (name, _) in parts.items()}
    first = next(iter(parts.values()))[1]
    columns = list(first.column_names)
    inputs = opts.get("input", "image" if "image" in columns else "x")
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    label = opts.get("label", "label")
    datasets = _datasets()
    feature = first.features.get(inputs[0])
    if len(inputs) == 1 and isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return _text_splits(cfg, seed, parts, where, inputs[0], label, opts.get("labels"), "label" in opts)
    for s, (_, ds) in parts.items():
        for c in [*inputs, label]:
            if c not in ds.column_names:
                raise DataError(f"{where[s]}: has no column {c!r}; columns are {', '.join(ds.column_names)} (set "
                                "data.options.input and data.options.label).")
    image = any(isinstance(first.features[c], datasets.Image) for c in inputs)
    if image and len(inputs) != 1:
        raise DataError(f"{where[next(iter(parts))]}: data.options.input names {len(inputs)} columns, one of them "
                        "an Image(); give the image column alone.")
    ys, labels = _label_column(parts, label, opts.get("labels"), where)

    p = cfg.preprocess
    channels = p.channels or "RGB"
    size = tuple(p.size) if p.size else None
    if image:
        if size is None:
            ds = next((d for _, d in parts.values() if len(d)), first)
            if not len(ds):
                raise DataError(f"data.path: {path} has no rows; add samples.")
            try:
                im = _image(ds.with_format(None, columns=inputs)[0][inputs[0]])
            except (OSError, ValueError) as e:
                raise DataError(f"{path}: the first image cannot be read ({e}); remove or replace it, or set "
                                "data.preprocess.size.") from None
            size = (im.height, im.width)
        pre = Preprocess(scale=1 / 255.0, extra={"size": list(size), "channels": channels, "layout": "NCHW"})
    else:
        pre = Preprocess()
    sources = [path] if path.is_file() else []
    out = {}
    for s, (_, ds) in parts.items():
        files = sources + [Path(f["filename"]) for f in ds.cache_files]  # names, sizes, mtimes: nothing is read
        fp = f"{getattr(ds, '_fingerprint', '')}|{file_fingerprint(files)}|{s}"
        out[s] = HFSamples(ds, where[s], inputs, ys[s], pre, image, size, channels, fp)
    return make_splits(cfg, seed, "hf-datasets", out, pre, labels)


class HFTexts(SampleSet):
    """A string column of a ``datasets.Dataset``, one Arrow read per batch (the text tasks tokenise it)."""

    input_shape = ()

    def __init__(self, ds, source: str, column: str, y: np.ndarray, fingerprint: str) -> None:
        self.ds, self.source, self.column, self.y, self._fp = ds.with_format(None, columns=[column]), source, column, y, fingerprint
        self.preprocess = Preprocess()

    def read(self, indices) -> list[str]:
        idx = [int(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
        texts = self.ds[idx][self.column] if idx else []
        for j, t in enumerate(texts):
            if not isinstance(t, str):
                raise DataError(f"{self.where(idx[j])}: column {self.column!r} holds {type(t).__name__}, not text; "
                                "fill or drop that row.")
        return texts

    def subset(self, indices: np.ndarray) -> "HFTexts":
        idx = np.asarray(indices, dtype=np.int64)
        return HFTexts(self.ds.select(idx), self.source, self.column, self.y[idx], f"{self._fp}|{idx.tobytes().hex()[:64]}")

    def where(self, i: int) -> str:
        return f"{self.source} row {i}"

    def _fingerprint(self) -> str:
        return f"{self._fp}|{self.column}"


def _text_splits(cfg, seed: int, parts: dict, where: dict, column: str, label: str, names, label_asked: bool) -> Splits:
    """A string input column: labelled (a label column: text classification, split like the other sources)
    or not (sentence embedding: every row is transfer text, evaluated on STS-B pairs)."""
    from .core import split_indices
    from .text import embedding_splits

    out = {}
    labelled = all(label in ds.column_names for _, ds in parts.values())
    if label_asked and not labelled:
        s, ds = next((s, ds) for s, (_, ds) in parts.items() if label not in ds.column_names)
        raise DataError(f"{where[s]}: has no column {label!r}; columns are {', '.join(ds.column_names)} (set "
                        "data.options.label, or leave it out for unlabelled texts).")
    ys, labels = _label_column(parts, label, names, where) if labelled else ({}, None)
    for s, (_, ds) in parts.items():
        files = [Path(f["filename"]) for f in ds.cache_files]
        fp = f"{getattr(ds, '_fingerprint', '')}|{file_fingerprint(files)}|{s}"
        out[s] = HFTexts(ds, where[s], column, ys[s] if labelled else np.full(len(ds), -1, np.int64), fp)
    if not labelled:
        if len(out) != 1:
            raise DataError(f"{next(iter(where.values()))}: unlabelled texts come as one split (the transfer text); "
                            "save them as one Dataset or add a label column.")
        return embedding_splits(next(iter(out.values())), "hf-datasets")
    if "test" not in out:
        base = next(iter(out.values()))
        tr, va, te = split_indices(base.y, cfg, seed)
        out = {"train": base.subset(tr), "val": base.subset(va), "test": base.subset(te)}
    out.setdefault("val", out["train"].subset(np.zeros(0, np.int64)))
    k = len(labels) if labels else int(max(int(p.y.max()) for p in out.values() if len(p)) + 1)
    return Splits(train=out["train"], val=out["val"], test=out["test"], num_classes=k, input_shape=(),
                  labels=list(labels) if labels else [str(i) for i in range(k)], normalization={"input": "text"},
                  name="hf-datasets")
