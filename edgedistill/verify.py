"""Verify stage: the metric of every artifact on the held-out split, a batch at a time, through the runtime its file
is for: ONNX Runtime for ``.onnx``, LiteRT for ``.tflite`` (:class:`edgedistill.litert.LiteRTSession`)."""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from .onnx_inspect import check_onnx
from .data.core import SampleSet, as_samples
from .errors import EdgeDistillError


def model_session(path: str | os.PathLike, threads: int = 0, graph_arithmetic: bool = False,
                  precise_int8: bool = True):
    """A checked session for ``path``: ONNX Runtime's CPU session configured by
    :mod:`edgedistill.ort_session`, or for a ``.tflite`` file a
    :class:`~edgedistill.litert.LiteRTSession` with the same surface; a file the runtime cannot load is one sentence.
    ``graph_arithmetic``: no graph optimizations, so a QDQ graph computes its own arithmetic instead of fused INT8
    kernels. ``precise_int8=False``: ONNX Runtime's default session, whose U8S8 kernels saturate 16-bit pair sums on
    an x86 CPU without VNNI (VPMADDUBSW; ONNX Runtime's quantization docs): what an app that does not set
    :data:`~edgedistill.ort_session.PRECISE_INT8` gets."""
    from .ort_session import PRECISE_INT8, session_options
    from .litert import LiteRTSession, is_tflite

    if is_tflite(path):
        return LiteRTSession(path, threads)
    import onnxruntime as ort

    check_onnx(path)
    opts = session_options(threads, graph_arithmetic, PRECISE_INT8 if precise_int8 else None)
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise EdgeDistillError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:160]}); re-export the model.") from None


def onnx_batches(path: str | os.PathLike, split: SampleSet | np.ndarray, batch_size: int = 256,
                 threads: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(outputs, labels)`` of the model (.onnx or .tflite) at ``path`` for each batch of ``split``, read as it goes."""
    split = as_samples(split)
    sess = model_session(path, threads)
    inp = sess.get_inputs()[0]
    shape = inp.shape[1:]
    want = tuple(split.input_shape)
    if len(shape) != len(want) or any(isinstance(d, int) and d != s for d, s in zip(shape, want)):
        raise EdgeDistillError(f"{path}: expects input of shape {inp.shape}, but the data has samples of shape "
                               f"{list(want)}; export the model for this data.")
    for start in range(0, len(split), batch_size):
        idx = np.arange(start, min(start + batch_size, len(split)))
        yield sess.run(None, {inp.name: split.read(idx)})[0], split.y[idx]


def onnx_predict(path: str | os.PathLike, x: SampleSet | np.ndarray, batch_size: int = 256, threads: int = 0) -> np.ndarray:
    """Outputs of the model at ``path`` on ``x`` (for a bounded number of samples: parity checks)."""
    outs = [out for out, _ in onnx_batches(path, x, batch_size, threads)]
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def accuracy(path: str | os.PathLike, split: SampleSet) -> float:
    """Top-1 accuracy of the model at ``path`` on ``split`` (unlabelled samples ignored), streamed."""
    correct = count = 0
    for out, y in onnx_batches(path, split):
        mask = y >= 0
        correct += int((out.argmax(1)[mask] == y[mask]).sum())
        count += int(mask.sum())
    return correct / count if count else float("nan")


def verify(models: dict[str, str], split: SampleSet, task=None, roles: dict[str, str] | None = None) -> dict:
    """``{name: {"metric": {"name": ..., "value": v}, "samples": n}}`` for every model file: the task's metric
    (see :mod:`edgedistill.tasks`), measured with what the file's role (teacher or student) needs (its
    tokenizer); without a task, top-1 accuracy."""
    roles = roles or {}
    if task is None:
        return {name: {"metric": {"name": "accuracy", "value": accuracy(path, split)}, "samples": len(split)}
                for name, path in models.items()}
    return {name: {"metric": task.metric(path, split, roles.get(name, "student")), "samples": task.metric_samples(split)}
            for name, path in models.items()}
