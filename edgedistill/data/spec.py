"""What a command's ``--data`` names, as a recipe's ``[data]`` section (``DataConfig``).

- ``data.toml``: a file with a ``[data]`` table, exactly as in a recipe (any source, any preprocessing);
- ``file.npz``: arrays ``x`` (fed to the model as stored) and ``y`` (labels; absent: calibration only);
- a folder holding ``x.npy`` (or ``x_train.npy``...): the same, read by rows;
- any other folder: an image folder (one sub-folder per class, or ``train/`` ``test/`` folders of them),
  resized to the model's input, in its channel count, scaled to [0, 1], no mean/std.

Nothing is normalised unless the TOML says so: an ONNX model's preprocessing is the user's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .. import _schema
from ..errors import ConfigError, DataError
from ..recipe import DataConfig

RAW = {"mean": "none", "std": "none"}


def data_config(spec: str, input_shape: Sequence | None = None) -> tuple[DataConfig, str]:
    """``(DataConfig, one line saying how the data is read)`` for a ``--data`` argument; ``input_shape`` is
    the model's input without the batch axis (sizes an image folder's images)."""
    path = Path(spec)
    if not path.exists():
        raise DataError(f"--data: {spec} does not exist; pass an .npz file, a folder of .npy arrays or images, "
                        "or a .toml with a [data] table.")
    if path.suffix == ".toml":
        table = _schema.load_toml(path, "data file")
        extra = sorted(set(table) - {"data"})
        if "data" not in table or extra:
            raise ConfigError(f"{path}: expected one [data] table, as in a recipe (found {sorted(table) or 'nothing'}).")
        try:
            cfg = _schema.from_dict(DataConfig, table["data"], "data")
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        if cfg.path and not Path(cfg.path).is_absolute():  # relative to the TOML, like a recipe's own files
            cfg.path = str((path.parent / cfg.path).resolve())
        return cfg, f"{cfg.dataset} from {path}"
    if path.is_file():
        if path.suffix != ".npz":
            raise DataError(f"--data: {path} is neither .npz nor .toml; save arrays with np.savez(x=..., y=...) or "
                            "describe the data in a .toml [data] table.")
        return _arrays("npz", path), f"arrays from {path}, fed as stored"
    if any(path.glob("x*.npy")):
        return _arrays("npy", path), f"arrays from {path}/*.npy, fed as stored"
    shape = tuple(input_shape or ())
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape) or shape[0] not in (1, 3):
        raise DataError(f"--data: {path} is read as an image folder, but the model's input {list(shape)} is not "
                        "C x H x W with 1 or 3 channels and fixed sizes; describe the data in a .toml [data] table.")
    c, h, w = shape
    pre = {"size": [h, w], "channels": "L" if c == 1 else "RGB", "scale": 1 / 255, **RAW}
    cfg = _schema.from_dict(DataConfig, {"dataset": "image-folder", "path": str(path), "preprocess": pre}, "data")
    how = f"images from {path}, resized to {h}x{w}, {pre['channels']}, pixel / 255 (a .toml [data] table sets other preprocessing)"
    return cfg, how


def _arrays(dataset: str, path: Path) -> DataConfig:
    return _schema.from_dict(DataConfig, {"dataset": dataset, "path": str(path), "options": {"unlabelled": True},
                                          "preprocess": RAW}, "data")

