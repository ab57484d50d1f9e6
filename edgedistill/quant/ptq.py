"""PTQ stage: ONNX Runtime static INT8 quantization in QDQ format.

``quant_pre_process`` (shape inference + graph optimisation), then ``quantize_static`` with S8S8
per-channel weights by default and the recipe's calibration method on samples from the training
split. Never dynamic quantization for convolutional models (ConvInteger runs slower than FP32).
U8S8 (``activation_type = "uint8"``) and ``reduce_range`` are there for CPUs without VNNI. MinMax
calibration keeps two scalars per tensor per batch; Entropy and Percentile keep every activation of
every calibration sample until the histograms are built, so for them the sample count is capped to
fit ``_HIST_BUDGET_FLOATS`` activation values (estimated from the graph's inferred shapes). With ``max_drop`` set, the accuracy-aware fallback
(:mod:`edgedistill.quant.fallback`) keeps the most harmful nodes in FP32 until the drop fits.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from .. import _io
from ..errors import StageError
from ..recipe import PTQConfig

_CALIB_BATCH = 32
_HIST_BUDGET_FLOATS = 256 * 2**20  # 1 GiB of float32 activations held by the histogram calibrators


class ArrayReader(CalibrationDataReader):
    """A CalibrationDataReader over an array, fed in small batches so memory stays bounded."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = _CALIB_BATCH) -> None:
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
                  nodes_to_exclude: list[str] | None = None,
                  evaluate: Callable[[str], float] | None = None) -> dict:
    """Quantize ``onnx_in`` to INT8 QDQ at ``onnx_out``; returns what was done (for ``meta.json``).

    With ``cfg.max_drop`` set, ``evaluate(onnx_path) -> accuracy`` (a fraction, on held-out data)
    drives the accuracy-aware fallback and the result carries its ``fallback`` record.
    """
    import onnx

    logging.getLogger("root").setLevel(logging.ERROR)  # ORT's calibrator logs every tensor at INFO
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    if cfg.max_drop is not None and evaluate is None:
        raise StageError("ptq.max_drop is set but no evaluate(onnx_path) -> accuracy callback was given; pass one "
                         "(the pipeline's verify accuracy) or unset ptq.max_drop.")
    input_name = onnx.load(str(onnx_in), load_external_data=False).graph.input[0].name
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    fallback = None
    with tempfile.TemporaryDirectory(dir=onnx_out.parent) as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        _preprocess(onnx_in, pre)
        requested = len(calib_x)
        if cfg.calibration != "minmax":
            calib_x = calib_x[:max(1, _HIST_BUDGET_FLOATS // _activation_floats_per_sample(pre))]

        def quantize(exclude: list[str], out: str) -> None:
            _quantize_static(pre, Path(out), input_name, calib_x, cfg, list(nodes_to_exclude or []) + list(exclude))

        if cfg.max_drop is None:
            out_tmp = Path(tmp) / "quantized.onnx"
            quantize([], str(out_tmp))
            _io.write_bytes(onnx_out, out_tmp.read_bytes())
        else:
            from .fallback import accuracy_aware_fallback

            fallback = accuracy_aware_fallback(quantize, pre, onnx_out, evaluate, calib_x, cfg.max_drop,
                                               max_nodes=cfg.max_fallback_nodes,
                                               fp32_accuracy=float(evaluate(str(onnx_in))))
    excluded = list(nodes_to_exclude or []) + (fallback["nodes_in_fp32"] if fallback else [])
    return {
        "path": str(onnx_out), "format": "QDQ", "activation_type": cfg.activation_type, "weight_type": "int8",
        "per_channel": cfg.per_channel, "reduce_range": cfg.reduce_range, "calibration": cfg.calibration,
        "calibration_samples": int(len(calib_x)), "calibration_samples_requested": int(requested),
        "nodes_excluded": excluded,
        "size_mb": _io.file_size_mb(onnx_out), "fallback": fallback,
    }


def _preprocess(onnx_in: Path, pre: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(onnx_in), str(pre), skip_symbolic_shape=True)
    except Exception as e:
        raise StageError(f"ptq: pre-processing {onnx_in.name} failed ({str(e).splitlines()[0][:160]}).") from None


def _activation_floats_per_sample(model_path: Path) -> int:
    """Float activation values one sample produces (sum over inferred tensor shapes, batch dim excluded)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    total = 0
    for vi in list(graph.value_info) + list(graph.output):
        dims = vi.type.tensor_type.shape.dim[1:]
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and all(d.HasField("dim_value") for d in dims):
            total += int(np.prod([d.dim_value for d in dims])) if dims else 1
    return max(total, 1)


def _quantize_static(pre: Path, out: Path, input_name: str, calib_x: np.ndarray, cfg: PTQConfig,
                     exclude: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibration]
    act = QuantType.QInt8 if cfg.activation_type == "int8" else QuantType.QUInt8
    # (not CalibMaxIntermediateOutputs: in ORT 1.32 MinMax drops the batches it flushes instead of merging them)
    extra = {"WeightSymmetric": True}
    if cfg.calibration == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    quantize_static(
        str(pre), str(out), ArrayReader(input_name, calib_x), quant_format=QuantFormat.QDQ,
        per_channel=cfg.per_channel, reduce_range=cfg.reduce_range, activation_type=act,
        weight_type=QuantType.QInt8, calibrate_method=method, nodes_to_exclude=exclude, extra_options=extra,
    )
