"""PTQ stage: ONNX Runtime static INT8 quantization in QDQ format.

``quant_pre_process`` (shape inference + graph optimisation), then ``quantize_static`` with S8S8
per-channel weights by default and the recipe's calibration method on samples from the training
split. Never dynamic quantization for convolutional models (ConvInteger runs slower than FP32).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from .. import _io
from ..errors import StageError
from ..recipe import PTQConfig


class _ArrayReader:
    """A CalibrationDataReader over an array, fed in small batches so memory stays bounded."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = 32) -> None:
        self.input_name, self.x, self.batch, self.i = input_name, x, batch, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        chunk = np.ascontiguousarray(self.x[self.i:self.i + self.batch].astype(np.float32))
        self.i += self.batch
        return {self.input_name: chunk}

    def rewind(self) -> None:
        self.i = 0


def calibration_sample(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` samples drawn without replacement from the training inputs (deterministic in ``seed``)."""
    idx = np.random.default_rng(seed).permutation(len(x))[: min(n, len(x))]
    return x[np.sort(idx)]


def quantize_int8(onnx_in: str | os.PathLike, onnx_out: str | os.PathLike, calib_x: np.ndarray, cfg: PTQConfig,
                  nodes_to_exclude: list[str] | None = None) -> dict:
    """Quantize ``onnx_in`` to INT8 QDQ at ``onnx_out``; returns what was done (for ``meta.json``)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger("root").setLevel(logging.ERROR)  # ORT's calibrator logs every tensor at INFO
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibration]
    act = QuantType.QInt8 if cfg.activation_type == "int8" else QuantType.QUInt8
    extra = {"WeightSymmetric": True}
    if cfg.calibration == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    input_name = onnx.load(str(onnx_in), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(dir=onnx_out.parent) as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        try:
            quant_pre_process(str(onnx_in), str(pre), skip_symbolic_shape=True)
        except Exception as e:
            raise StageError(f"ptq: pre-processing {onnx_in.name} failed ({str(e).splitlines()[0][:160]}).") from None
        out_tmp = Path(tmp) / "quantized.onnx"
        quantize_static(
            str(pre), str(out_tmp), _ArrayReader(input_name, calib_x), quant_format=QuantFormat.QDQ,
            per_channel=cfg.per_channel, reduce_range=cfg.reduce_range, activation_type=act,
            weight_type=QuantType.QInt8, calibrate_method=method, nodes_to_exclude=nodes_to_exclude or [],
            extra_options=extra,
        )
        _io.write_bytes(onnx_out, out_tmp.read_bytes())
    return {
        "path": str(onnx_out), "format": "QDQ", "activation_type": cfg.activation_type, "weight_type": "int8",
        "per_channel": cfg.per_channel, "reduce_range": cfg.reduce_range, "calibration": cfg.calibration,
        "calibration_samples": int(len(calib_x)), "nodes_excluded": list(nodes_to_exclude or []),
        "size_mb": _io.file_size_mb(onnx_out),
    }
