"""LiteRT (TensorFlow Lite): the ``.tflite`` half of the runtime choice.

* :class:`LiteRTSession` runs a ``.tflite`` file through ``ai_edge_litert``'s interpreter (XNNPACK delegate) behind
  the ONNX Runtime session surface the verify, parity and bench code already call (``get_inputs()``,
  ``run(None, feeds)``): an INT8 model's int8 input is quantized and its int8 output dequantized inside ``run``, with
  the tensors' own quantization parameters, as an app pays it; a model converted for batch 1 runs a batch row by row.
* :func:`check_tflite` and :func:`tflite_facts` look at a file without running a model (bundle metadata: inputs,
  outputs, int8 quantization parameters).
* :func:`quiet_fds` keeps the converter's and the runtime's C++ chatter out of the user's terminal.

The conversion itself is :func:`edgedistill.export.export_tflite` (torch side, the ``litert`` extra). This module
imports numpy and the stdlib at the top and ``ai_edge_litert`` (torch-free) when a session opens, so a board with
``pip install edgedistill ai-edge-litert`` benchmarks ``.tflite`` files.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import DataError, EdgeDistillError

SUFFIX = ".tflite"
PROVIDER = "LiteRT (XNNPACK)"  # what the bench reports as the execution provider of a .tflite file
INSTALL = "pip install 'edgedistill[litert]' (or ai-edge-litert alone to run and benchmark .tflite files)"
_ONNX_TYPES = {np.float32: "tensor(float)", np.float16: "tensor(float16)", np.int32: "tensor(int32)",
               np.int64: "tensor(int64)", np.int8: "tensor(int8)", np.uint8: "tensor(uint8)", np.bool_: "tensor(bool)"}


def is_tflite(path: str | os.PathLike) -> bool:
    return Path(path).suffix == SUFFIX


def runtime_of(path: str | os.PathLike) -> str:
    """The runtime a model file is for: ``"litert"`` for a ``.tflite`` file, else ``"onnxruntime"``."""
    return "litert" if is_tflite(path) else "onnxruntime"


def check_tflite(path: str | os.PathLike) -> None:
    """The file exists and is a TFLite flatbuffer (file identifier ``TFL3``), before an interpreter reads it."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: model file not found; check the path.")
    with open(p, "rb") as f:
        head = f.read(8)
    if head[4:8] != b"TFL3":
        raise DataError(f"{p}: not a TFLite model (no TFL3 identifier); pass a .tflite file written by a LiteRT "
                        "converter, or re-export it.")


def _interpreter(path: str | os.PathLike, threads: int = 0):
    check_tflite(path)
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise EdgeDistillError(f"{path}: running a .tflite file needs the LiteRT runtime; {INSTALL}.") from None
    try:
        with quiet_fds():  # the delegate's INFO line goes to fd 2
            it = Interpreter(model_path=str(path), num_threads=threads or None)
            it.allocate_tensors()
    except Exception as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise EdgeDistillError(f"{path}: LiteRT cannot load it ({detail}); re-export the model.") from None
    return it


class _Arg:
    """What ONNX Runtime's NodeArg gives: a name, a shape and a type string."""

    def __init__(self, name: str, shape: list, type: str) -> None:
        self.name, self.shape, self.type = name, shape, type


class LiteRTSession:
    """A ``.tflite`` model behind ONNX Runtime's ``InferenceSession`` surface. ``get_inputs()`` gives the float (or
    integer) arrays a caller feeds: an int8 input is quantized inside :meth:`run`, an int8 output dequantized. The
    batch dimension is dynamic to the caller: a model converted for batch 1 runs a larger batch row by row."""

    def __init__(self, path: str | os.PathLike, threads: int = 0) -> None:
        self.path = str(path)
        self.interpreter = it = _interpreter(path, threads)
        self._in, self._out = it.get_input_details(), it.get_output_details()
        self._batch = int(self._in[0]["shape"][0]) if len(self._in[0]["shape"]) else 1
        self._feed = [(d["index"], _quantizer(d)) for d in self._in]
        self._fetch = [(d["index"], _dequantizer(d)) for d in self._out]
        self._set, self._get, self._invoke = it.set_tensor, it.get_tensor, it.invoke

    def get_inputs(self) -> list[_Arg]:
        return [_arg(d) for d in self._in]

    def get_outputs(self) -> list[_Arg]:
        return [_arg(d) for d in self._out]

    def get_providers(self) -> list[str]:
        return [PROVIDER]

    @property
    def int8_io(self) -> bool:
        """Whether an input or output is int8 that :meth:`run` converts (the app's share of an INT8 model's call)."""
        return any(_quantized(d) for d in self._in + self._out)

    def convert_io(self, feeds: dict) -> None:
        """Only the conversions :meth:`run` does around ``invoke()`` (the bench reports their share of a call)."""
        for (_, q), a in zip(self._feed, feeds.values()):
            q(a)
        for index, dq in self._fetch:
            dq(self._get(index))

    def run(self, output_names, feeds: dict) -> list[np.ndarray]:
        """Outputs for ``feeds`` (matched to the model's inputs by position: a ``.tflite`` signature names its
        inputs ``args_0``...). ``output_names`` is ignored: every output is returned, as ONNX Runtime does for None."""
        arrays = list(feeds.values())
        if len(arrays) != len(self._in):
            raise DataError(f"{self.path}: takes {len(self._in)} input(s), {len(arrays)} given.")
        n = len(arrays[0])
        if n == self._batch:
            return self._run_one(arrays)
        if self._batch != 1:
            raise DataError(f"{self.path}: converted for batch {self._batch}; feed batches of that size.")
        rows = [self._run_one([a[i:i + 1] for a in arrays]) for i in range(n)]
        return [np.concatenate([r[k] for r in rows]) for k in range(len(self._out))]

    def _run_one(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        for (index, q), a in zip(self._feed, arrays):
            self._set(index, q(a))
        self._invoke()
        return [dq(self._get(index)) for index, dq in self._fetch]


def _quantized(d: dict) -> bool:
    return bool(d["quantization"][0]) and d["dtype"] in (np.int8, np.uint8)


def _arg(d: dict) -> _Arg:
    """The tensor as the caller sees it: float for a quantized int8/uint8 tensor (converted by the session)."""
    dtype = np.float32 if _quantized(d) else d["dtype"]
    return _Arg(d["name"], ["batch", *map(int, d["shape"][1:])], _ONNX_TYPES.get(dtype, "tensor(float)"))


def _quantizer(d: dict):
    """``real -> q`` for one input tensor, as an app does it with the tensor's own scale and zero point
    (``q = clamp(round(real / scale) + zero_point)``), with preallocated buffers for the model's own shape: a few
    in-place numpy calls (microseconds), not one allocation per step."""
    dtype = d["dtype"]
    if not _quantized(d):
        return lambda a: a.astype(dtype, copy=False)
    scale, zero = d["quantization"]
    inv, zero = np.float32(1.0 / scale), np.float32(zero)
    info = np.iinfo(dtype)
    lo, hi = np.float32(info.min), np.float32(info.max)
    shape = tuple(int(s) for s in d["shape"])
    buf, q = np.empty(shape, np.float32), np.empty(shape, dtype)

    def quantize(a: np.ndarray) -> np.ndarray:
        if a.shape != shape:
            return np.clip(np.rint(a * inv + zero), lo, hi).astype(dtype)
        np.multiply(a, inv, out=buf)
        np.add(buf, zero, out=buf)
        np.rint(buf, out=buf)
        np.maximum(buf, lo, out=buf)
        np.minimum(buf, hi, out=buf)
        q[...] = buf
        return q
    return quantize


def _dequantizer(d: dict):
    """``q -> real`` for one output tensor (``real = scale * (q - zero_point)``); a fresh array each call."""
    if not _quantized(d):
        return lambda t: t.copy()
    scale, zero = np.float32(d["quantization"][0]), np.float32(d["quantization"][1])

    def dequantize(t: np.ndarray) -> np.ndarray:
        out = t.astype(np.float32)
        np.subtract(out, zero, out=out)
        np.multiply(out, scale, out=out)
        return out
    return dequantize


def tflite_facts(path: str | os.PathLike) -> dict:
    """Inputs and outputs of a ``.tflite`` file as an app needs them: name, shape, dtype, and for an int8 tensor its
    quantization (``real = scale * (q - zero_point)``); the signature key and the file's size."""
    it = _interpreter(path)

    def tensor(d: dict) -> dict:
        out = {"name": d["name"], "shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
        scale, zero = d["quantization"]
        if scale:
            out["quantization"] = {"scale": float(scale), "zero_point": int(zero)}
        return out

    signatures = it.get_signature_list()
    return {"format": "int8" if any(d["quantization"][0] for d in it.get_input_details()) else "float",
            "inputs": [tensor(d) for d in it.get_input_details()], "outputs": [tensor(d) for d in it.get_output_details()],
            "signature": next(iter(signatures), None), "size_mb": Path(path).stat().st_size / 1e6}


@contextlib.contextmanager
def quiet_fds(keep: list | None = None):
    """Send what C++ and Python print to fds 1 and 2 into a temporary file for the block (the converter's progress
    lines, glog, torchao's notices at import); its last lines are appended to ``keep`` (a list) when given."""
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            yield
        finally:
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)
            if keep is not None:
                sink.seek(0)
                keep.extend(sink.read().decode(errors="replace").strip().splitlines()[-20:])
