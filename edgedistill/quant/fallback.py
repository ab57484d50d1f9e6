"""Accuracy-aware fallback: keep the most harmful nodes in FP32, one at a time, until the INT8
model's accuracy drop is within ``max_drop``.

ONNX Runtime has no accuracy-aware mode. Nodes are ranked by quantization error measured with
``onnxruntime.quantization.qdq_loss_debug``: the signal-to-quantization-noise ratio (SQNR, dB) of
every quantized tensor before vs after its QuantizeLinear/DequantizeLinear pair, and of every
weight. A node's score is the lowest SQNR among its inputs, outputs (and the output of a
ReLU/Clip that follows it alone) and weights; the lowest score is the most harmful. Accuracies are
fractions in [0, 1]; ``max_drop`` is in percentage points.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnxruntime.quantization import qdq_loss_debug as qdbg

from .. import _io
from ..errors import StageError
from ..data.core import as_samples
from .calibration import ArrayReader

_PASS_THROUGH = ("Relu", "Clip")


def rank_nodes(float_model: str | Path, qdq_model: str | Path, x: np.ndarray, max_samples: int = 64) -> list[dict]:
    """Nodes of ``float_model`` that ``qdq_model`` quantizes, most harmful (lowest SQNR) first.

    An activation's SQNR compares the FP32 model's tensor with that same tensor passed through the
    QDQ model's quantizer (its scale and zero point): the noise that quantizing this one tensor adds.
    """
    float_model, qdq_model = str(float_model), str(qdq_model)
    graph = onnx.load(float_model).graph
    input_name = graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="edgedistill-sqnr-") as tmp:
        aug = str(Path(tmp) / "float_augmented.onnx")
        qdbg.modify_model_output_intermediate_tensors(float_model, aug)
        samples = as_samples(x)
        samples = samples.subset(np.arange(min(max_samples, len(samples))))
        acts = qdbg.collect_activations(aug, ArrayReader(input_name, samples, batch=max_samples))
    act_err = {t: qdbg.compute_signal_to_quantization_noice_ratio(acts[t], [_qdq(a, s, z) for a in acts[t]])
               for t, (s, z) in _activation_qparams(qdq_model).items() if t in acts}
    w_err = qdbg.compute_weight_error(qdbg.create_weight_matching(float_model, qdq_model))
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    ranking = []
    for n in graph.node:
        tensors = list(n.input) + list(n.output)
        for o in n.output:  # a ReLU after a conv shares its quantization
            nxt = consumers.get(o, [])
            if len(nxt) == 1 and nxt[0].op_type in _PASS_THROUGH:
                tensors += list(nxt[0].output)
        scores = {t: act_err[t] for t in tensors if t in act_err}
        scores.update({t: w_err[t] for t in n.input if t in w_err})
        finite = {t: s for t, s in scores.items() if np.isfinite(s)}
        if not finite or n.op_type in _PASS_THROUGH:
            continue
        worst = min(finite, key=finite.get)
        ranking.append({"node": n.name, "op_type": n.op_type, "sqnr_db": round(float(finite[worst]), 3),
                        "tensor": worst})
    ranking.sort(key=lambda r: r["sqnr_db"])
    return ranking


def _activation_qparams(qdq_model: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """FP32 tensor name -> (scale, zero point) of the QuantizeLinear that quantizes it."""
    graph = onnx.load(qdq_model).graph
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    out = {}
    for n in graph.node:
        if n.op_type == "QuantizeLinear" and n.input[1] in consts and len(n.input) > 2 and n.input[2] in consts:
            name = n.input[0].removesuffix(qdbg.QUANT_INPUT_SUFFIX)
            out[name] = (consts[n.input[1]], consts[n.input[2]])
    return out


def _qdq(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    info = np.iinfo(zero_point.dtype)
    q = np.clip(np.rint(x / scale) + zero_point.astype(np.float32), info.min, info.max)
    return ((q - zero_point.astype(np.float32)) * scale).astype(np.float32)


def accuracy_aware_fallback(quantize: Callable[[list[str], str], None], float_model: str | Path,
                            out_path: str | Path, evaluate: Callable[[str], float], calib_x: np.ndarray,
                            max_drop: float, max_nodes: int = 10, fp32_accuracy: float | None = None) -> dict:
    """Quantize with ``quantize(nodes_to_exclude, path)``, then exclude nodes by rank until the drop fits.

    Returns the record the report shows: FP32 accuracy, every step (nodes kept in FP32, accuracy,
    drop in points), the chosen step, whether ``max_drop`` was met, and the SQNR ranking.
    """
    if not callable(evaluate):
        raise StageError("ptq.max_drop is set but no evaluate(onnx_path) -> accuracy callback was given; pass one.")
    fp32 = float(evaluate(str(float_model))) if fp32_accuracy is None else float(fp32_accuracy)
    steps: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgedistill-fallback-") as tmp:

        def attempt(excluded: list[str]) -> str:
            path = str(Path(tmp) / f"step_{len(steps):02d}.onnx")
            quantize(list(excluded), path)
            acc = float(evaluate(path))
            steps.append({"nodes_in_fp32": list(excluded), "accuracy": acc, "drop_points": round((fp32 - acc) * 100, 4)})
            return path

        paths = [attempt([])]
        ranking: list[dict] = []
        if steps[0]["drop_points"] > max_drop:
            ranking = rank_nodes(float_model, paths[0], calib_x)
            excluded: list[str] = []
            for entry in ranking[:max_nodes]:
                excluded.append(entry["node"])
                paths.append(attempt(excluded))
                if steps[-1]["drop_points"] <= max_drop:
                    break
        met = [i for i, s in enumerate(steps) if s["drop_points"] <= max_drop]
        chosen = met[0] if met else max(range(len(steps)), key=lambda i: steps[i]["accuracy"])
        _io.atomic_write(out_path, lambda tmp_path: shutil.copyfile(paths[chosen], tmp_path))
    return {"fp32_accuracy": fp32, "max_drop_points": max_drop, "met": bool(met), "chosen_step": chosen,
            "nodes_in_fp32": steps[chosen]["nodes_in_fp32"], "accuracy": steps[chosen]["accuracy"],
            "steps": steps, "ranking": ranking[:max(max_nodes, 10)]}
