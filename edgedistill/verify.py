"""Verify stage: the metric of every artifact on the held-out split, through ONNX Runtime."""

from __future__ import annotations

import os

import numpy as np

from ._checks import check_onnx
from .data import ArraySplit
from .errors import EdgeDistillError


def onnx_predict(path: str | os.PathLike, x: np.ndarray, batch_size: int = 256, threads: int = 0) -> np.ndarray:
    """Outputs of the ONNX model at ``path`` on ``x`` (run in batches through ONNX Runtime)."""
    import onnxruntime as ort

    check_onnx(path)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise EdgeDistillError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:160]}); re-export the model.") from None
    inp = sess.get_inputs()[0]
    shape = inp.shape[1:]
    if len(shape) != x.ndim - 1 or any(isinstance(d, int) and d != s for d, s in zip(shape, x.shape[1:])):
        raise EdgeDistillError(f"{path}: expects input of shape {inp.shape}, but the data has samples of shape "
                               f"{list(x.shape[1:])}; export the model for this data.")
    outs = [sess.run(None, {inp.name: np.ascontiguousarray(x[i:i + batch_size].astype(np.float32))})[0]
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


def accuracy(path: str | os.PathLike, split: ArraySplit) -> float:
    """Top-1 accuracy of the ONNX model at ``path`` on ``split`` (unlabelled samples ignored)."""
    mask = split.y >= 0
    pred = onnx_predict(path, split.x[mask]).argmax(1)
    return float(np.mean(pred == split.y[mask]))


def verify(models: dict[str, str], split: ArraySplit) -> dict:
    """``{name: {"metric": {"name": "accuracy", "value": v}, "samples": n}}`` for every ONNX file."""
    return {name: {"metric": {"name": "accuracy", "value": accuracy(path, split)}, "samples": int((split.y >= 0).sum())}
            for name, path in models.items()}
