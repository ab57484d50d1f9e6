"""PTQ stage: ONNX Runtime static INT8 quantization in QDQ format.

``quant_pre_process`` (shape inference + graph optimisation), then ``quantize_static`` with S8S8
per-channel weights by default and the recipe's calibration method on samples from the training
split. Never dynamic quantization for convolutional models (ConvInteger runs slower than FP32).
U8S8 (``activation_type = "uint8"``) and ``reduce_range`` are there for CPUs without VNNI. MinMax
calibration keeps two scalars per tensor per batch; Entropy and Percentile keep every activation of
every calibration sample until the histograms are built, so for them the sample count is capped to
fit ``_HIST_BUDGET_FLOATS`` activation values (estimated from the graph's inferred shapes).

Around ``quantize_static``, each a ``[ptq]`` switch, on by default: before it, on the FP32 graph, the
speed rules (``speed_rules``, :mod:`edgedistill.quant.int8_speed`), cross-layer equalization
(``equalize``, :mod:`edgedistill.quant.equalize`) and MSE-narrowed ranges (``calibration = "mse"``,
:mod:`edgedistill.quant.ranges`); after it, bias correction of the INT8 graph (``bias_correction``,
:mod:`edgedistill.quant.bias_correction`). With ``max_drop`` set, the accuracy-aware
fallback (:mod:`edgedistill.quant.fallback`) removes the most harmful activation quantizers until the drop fits.
Last, :func:`kernels_vs_graph` measures this host's sessions against the file and :func:`require_precise_session`
records in it the ONNX Runtime session config it needs (:mod:`edgedistill.ort_session`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from .. import _io
from .._machine import int8_dot_exact, isa_flags
from ..data.core import SampleSet, as_samples
from ..errors import StageError
from ..ort_session import PRECISE_INT8, default_session_differs, set_required_config_
from ..recipe import PTQConfig
from . import int8_speed
from ._qdq_onnx import strip_debug_info_
from .bias_correction import correct_biases
from .calibration import ArrayReader
from .equalize import equalize
from .ranges import mse_ranges

_HIST_BUDGET_FLOATS = 256 * 2**20  # 1 GiB of float32 activations held by the histogram calibrators


def quantize_int8(onnx_in: str | os.PathLike, onnx_out: str | os.PathLike, calib_x: SampleSet | np.ndarray | None,
                  cfg: PTQConfig, nodes_to_exclude: list[str] | None = None,
                  evaluate: Callable[[str], float] | None = None, mode: str = "static",
                  fusion: dict | None = None) -> dict:
    """Quantize ``onnx_in`` to INT8 at ``onnx_out``; returns what was done (for ``meta.json``).

    ``mode`` "static": QDQ calibrated on ``calib_x`` (convolutional and small models); "dynamic":
    MatMul / Gemm / Attention / Gather weights in INT8, activations quantized at run time (transformers),
    after ONNX Runtime's transformer fusion when ``fusion`` gives its arguments (``model_type``, ``num_heads``,
    ``hidden_size``).
    With ``cfg.max_drop`` set (static only), ``evaluate(onnx_path) -> metric`` (a fraction, on held-out
    data) drives the accuracy-aware fallback and the result carries its ``fallback`` record.
    """
    import onnx

    logging.getLogger("root").setLevel(logging.ERROR)  # ORT's calibrator logs every tensor at INFO
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    if mode == "dynamic":
        return _quantize_dynamic(onnx_in, onnx_out, cfg, fusion)
    if cfg.max_drop is not None and evaluate is None:
        raise StageError("ptq.max_drop is set but no evaluate(onnx_path) -> accuracy callback was given; pass one "
                         "(the pipeline's verify accuracy) or unset ptq.max_drop.")
    input_name = onnx.load(str(onnx_in), load_external_data=False).graph.input[0].name
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    fallback = None
    with tempfile.TemporaryDirectory(dir=onnx_out.parent) as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        _preprocess(onnx_in, pre)
        calib_x = as_samples(calib_x)
        requested = len(calib_x)
        if cfg.calibration not in ("minmax", "mse"):
            calib_x = calib_x.subset(np.arange(min(requested, max(1, _HIST_BUDGET_FLOATS // _activation_floats_per_sample(pre)))))
        # the FP32 graph the passes before quantize_static rewrite, then ORT quantizes (and bias correction reads)
        float_model = onnx.load(str(pre))
        speed = int8_speed.apply(float_model, enabled=cfg.speed_rules)  # stem / head nodes stay FP32 where INT8 loses
        nodes_to_exclude = list(dict.fromkeys([*(nodes_to_exclude or []), *speed["nodes_in_fp32"]]))
        passes: dict = {"equalization": equalize(float_model, calib_x) if cfg.equalize else None, "bias_correction": None}
        onnx.save(float_model, str(pre))
        ranges = mse_ranges(float_model, calib_x) if cfg.calibration == "mse" else {}
        if cfg.calibration == "mse":
            passes["ranges_narrowed"] = ranges

        def quantize(exclude: list[str], out: str) -> None:
            _quantize_static(pre, Path(out), input_name, calib_x, cfg, nodes_to_exclude + list(exclude), ranges)
            model = onnx.load(out)
            if cfg.bias_correction:
                passes["bias_correction"] = correct_biases(float_model, model, calib_x)
            strip_debug_info_(model)  # the exporter's per-node stack traces: 3 % of a small INT8 file
            onnx.save(model, out)

        if cfg.max_drop is None:
            out_tmp = Path(tmp) / "quantized.onnx"
            quantize([], str(out_tmp))
            _io.write_bytes(onnx_out, out_tmp.read_bytes())
        else:
            from .fallback import accuracy_aware_fallback

            fallback = accuracy_aware_fallback(quantize, pre, onnx_out, evaluate, calib_x, cfg.max_drop,
                                               max_nodes=cfg.max_fallback_nodes,
                                               fp32_accuracy=float(evaluate(str(onnx_in))))
    excluded = nodes_to_exclude + (fallback["nodes_in_fp32"] if fallback else [])
    passes["kernels_vs_graph"] = kernels_vs_graph(onnx_out, calib_x)
    passes["ort_session_config"] = require_precise_session(onnx_out, passes["kernels_vs_graph"])
    return {
        "path": str(onnx_out), "format": "QDQ", "activation_type": cfg.activation_type, "weight_type": "int8",
        "per_channel": cfg.per_channel, "reduce_range": cfg.reduce_range, "calibration": cfg.calibration,
        "calibration_samples": int(len(calib_x)), "calibration_samples_requested": int(requested),
        "nodes_excluded": excluded, **passes,
        "size_mb": _io.file_size_mb(onnx_out), "fallback": fallback, "int8_speed": speed,
    }


def kernels_vs_graph(path: str | os.PathLike, samples: SampleSet, max_samples: int = 128) -> dict:
    """This host's INT8 kernels against the file's own arithmetic (ONNX Runtime's optimizations off), on up to
    ``max_samples`` calibration samples: the first output's top-1 agreement and SQNR in edgedistill's session
    (:data:`~edgedistill.ort_session.PRECISE_INT8`: the integer products exact on every CPU; fused operators still
    round intermediate results their own way) and, on an x86 CPU without VNNI, in ONNX Runtime's default session
    (``default_session``: what an app that does not set the option gets there; its U8S8 kernels saturate 16-bit pair
    sums), with its agreement with edgedistill's session too (``top1_agreement_with_precise``: what the option
    changes). The passes above are tuned to the graph's arithmetic."""
    from ..verify import model_session

    graph = model_session(path, graph_arithmetic=True)
    name = graph.get_inputs()[0].name
    n = min(len(samples), max_samples)
    batches = [samples.read(np.arange(start, min(start + 32, n))) for start in range(0, n, 32)]

    def outputs(sess) -> list[np.ndarray]:
        return [np.asarray(sess.run(None, {name: xb})[0], np.float64).reshape(len(xb), -1) for xb in batches]

    def agreement(got: list[np.ndarray], want: list[np.ndarray]) -> float:
        same = sum(float((g.argmax(1) == w.argmax(1)).sum()) for g, w in zip(got, want))
        return round(same / max(n, 1), 4)

    def against_graph(got: list[np.ndarray]) -> dict:
        signal = sum(float(np.sum(w ** 2)) for w in want)
        noise = sum(float(np.sum((g - w) ** 2)) for g, w in zip(got, want))
        sqnr = round(10 * float(np.log10(signal / noise)), 2) if noise > 0 and signal > 0 else None  # None: identical
        return {"top1_agreement": agreement(got, want), "output_sqnr_db": sqnr}

    want, precise = outputs(graph), outputs(model_session(path))
    out = {"samples": n, **against_graph(precise), "isa": {k: v for k, v in isa_flags().items() if v is not None}}
    if not int8_dot_exact():
        default = outputs(model_session(path, precise_int8=False))
        out["default_session"] = {**against_graph(default), "top1_agreement_with_precise": agreement(default, precise)}
    return out


def require_precise_session(path: Path, kernels: dict) -> dict:
    """Where ONNX Runtime's default session on this host disagrees with edgedistill's precise one on more than 1 % of
    the samples (what :data:`~edgedistill.ort_session.PRECISE_INT8` changes; 7-bit weights, for one, it leaves
    alone), record the option in the file's metadata; return what the file asks for. On a host that computes INT8
    exactly nothing is measured and nothing is recorded."""
    import onnx

    config = PRECISE_INT8 if default_session_differs(kernels) else {}
    if config:
        model = onnx.load(str(path))
        set_required_config_(model, config)
        _io.write_bytes(path, model.SerializeToString())
    return config


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


def _quantize_static(pre: Path, out: Path, input_name: str, calib_x: SampleSet, cfg: PTQConfig,
                     exclude: list[str], ranges: dict[str, dict]) -> None:
    """ORT's ``quantize_static``; ``ranges``: activation ranges that replace the calibrated ones."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "mse": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibration]
    act = QuantType.QInt8 if cfg.activation_type == "int8" else QuantType.QUInt8
    # (not CalibMaxIntermediateOutputs: in ORT 1.32 MinMax drops the batches it flushes instead of merging them)
    extra = {"WeightSymmetric": True}
    if cfg.calibration == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    if ranges:
        extra["TensorQuantOverrides"] = {t: [{"rmin": np.array(r["rmin"], np.float32), "rmax": np.array(r["rmax"], np.float32)}]
                                         for t, r in ranges.items()}
    quantize_static(
        str(pre), str(out), ArrayReader(input_name, calib_x), quant_format=QuantFormat.QDQ,
        per_channel=cfg.per_channel, reduce_range=cfg.reduce_range, activation_type=act,
        weight_type=QuantType.QInt8, calibrate_method=method, nodes_to_exclude=exclude, extra_options=extra,
    )


def _quantize_dynamic(onnx_in: Path, onnx_out: Path, cfg: PTQConfig, fusion: dict | None) -> dict:
    """Dynamic INT8 (never for convolutions: ConvInteger runs slower than FP32). Embedding tables (Gather)
    are stored in INT8 too, dequantized on lookup."""
    import onnx
    import warnings
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if cfg.max_drop is not None:
        raise StageError("ptq.max_drop: the accuracy-aware fallback needs static quantization; unset max_drop or set "
                         "ptq.mode = \"static\".")
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    ops = ["MatMul", "Gemm", "Attention", "Gather"]
    with tempfile.TemporaryDirectory(dir=onnx_out.parent) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src, fused = onnx_in, {}
        if fusion:
            from onnxruntime.transformers import optimizer
            from onnxruntime.transformers.fusion_options import FusionOptions

            options = FusionOptions(fusion["model_type"])
            options.enable_embed_layer_norm = False  # a fused EmbedLayerNorm would keep the word embeddings FP32
            opt = optimizer.optimize_model(str(onnx_in), **fusion, optimization_options=options, opt_level=1,
                                           use_gpu=False)
            src = Path(tmp) / "fused.onnx"
            opt.save_model_to_file(str(src))
            fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        out_tmp = Path(tmp) / "quantized.onnx"
        quantize_dynamic(str(src), str(out_tmp), op_types_to_quantize=ops, per_channel=cfg.per_channel,
                         weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        _io.write_bytes(onnx_out, out_tmp.read_bytes())
    return {"path": str(onnx_out), "format": "dynamic", "weight_type": "int8", "per_channel": cfg.per_channel,
            "ops": ops, "fusion": fusion, "fused_ops": fused, "calibration_samples": 0, "nodes_excluded": [],
            "size_mb": _io.file_size_mb(onnx_out), "fallback": None}
