"""Accuracy-aware fallback: remove the most harmful activation quantizers, one at a time, until the INT8
model's accuracy drop is within ``max_drop``.

What is ranked and removed is a *quantizer* -- the QuantizeLinear/DequantizeLinear pair on one
activation tensor -- not a node: the harm of an outlier tensor sits in its quantizer, whichever node
produces or consumes it. Keeping a producing node in FP32 leaves that quantizer on its consumer's
input, which is how the node-level fallback this replaced made a drop worse before it made it better.

Ranking, on at most ``max_samples`` calibration samples: each tensor's own quantization noise (its
SQNR through its quantizer alone) short-lists the ``candidates`` noisiest; each short-listed quantizer
is then removed alone and scored by how much the model output's SQNR against FP32 rises. Quantizers
are removed greedily in that order, the validation metric (``evaluate``) judged after each, stopping
at the first step within ``max_drop``. The weights stay INT8 (with their DequantizeLinear): a layer
whose input or output quantizer is gone runs in FP32 on dequantized weights, and the file stays small.
Every step is reported: quantizers removed, the nodes now running in FP32, metric, drop, size and the
p50 latency of all steps timed together (interleaved, 1 thread). Accuracies are fractions in [0, 1];
``max_drop`` is in percentage points.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import helper

from .. import _io
from ..data.core import SampleSet, as_samples
from ..errors import StageError
from ._graph import consumers, initializers, run_batches

_ACTIVATIONS = ("Relu", "Clip")  # ORT folds these into the range of the quantizer that follows them


def activation_quantizers(qdq: onnx.ModelProto) -> list[str]:
    """Activation tensors of ``qdq`` that a QuantizeLinear quantizes (weights and biases excluded), in graph order."""
    inits = initializers(qdq.graph)
    return list(dict.fromkeys(n.input[0] for n in qdq.graph.node
                              if n.op_type == "QuantizeLinear" and n.input[0] not in inits))


def remove_quantizers(qdq: onnx.ModelProto, tensors: list[str], float_model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``qdq`` whose quantizers on ``tensors`` are gone (consumers read the FP32 tensor). A ReLU or
    Clip that ONNX Runtime had folded into a removed quantizer's range is put back from ``float_model``."""
    m = onnx.ModelProto()
    m.CopyFrom(qdq)
    g = m.graph
    users = consumers(g)
    producer = {o: n for n in g.node for o in n.output}
    float_producer = {o: n for n in float_model.graph.node for o in n.output}
    float_inits = initializers(float_model.graph)
    inits = initializers(g)
    for t in tensors:
        for q in [n for n in users.get(t, []) if n.op_type == "QuantizeLinear"]:
            for dq in users.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    dq.CopyFrom(helper.make_node("Identity", [t], list(dq.output), name=dq.name))
            g.node.remove(q)
        act, made_by = float_producer.get(t), producer.get(t)
        if act is not None and act.op_type in _ACTIVATIONS and made_by is not None and made_by.op_type not in _ACTIVATIONS:
            made_by.output[list(made_by.output).index(t)] = f"{t}__preact"
            g.node.insert(list(g.node).index(made_by) + 1,
                          helper.make_node(act.op_type, [f"{t}__preact", *act.input[1:]], [t], name=f"{act.name}__restored",
                                           **{a.name: helper.get_attribute_value(a) for a in act.attribute}))
            for name in act.input[1:]:
                if name and name not in inits and name in float_inits:
                    g.initializer.append(float_inits[name])
                    inits[name] = float_inits[name]
    return m


def nodes_left_fp32(qdq: onnx.ModelProto, reference: onnx.ModelProto) -> list[str]:
    """Compute nodes that run quantized in ``reference`` (activation inputs from DequantizeLinear, outputs into
    QuantizeLinear) but not in ``qdq``."""
    def quantized(model: onnx.ModelProto) -> set[str]:
        producer = {o: n for n in model.graph.node for o in n.output}
        users = consumers(model.graph)
        inits = initializers(model.graph)
        out = set()
        for n in model.graph.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Identity"):
                continue
            acts = [i for i in n.input if i and i not in inits and not (producer.get(i) is not None and producer[i].op_type
                                                                         == "DequantizeLinear" and producer[i].input[0] in inits)]
            if (acts and all(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in acts)
                    and all(any(u.op_type == "QuantizeLinear" for u in users.get(o, [])) for o in n.output)):
                out.add(n.name)
        return out

    return sorted(quantized(reference) - quantized(qdq))


def rank_quantizers(float_model: onnx.ModelProto, qdq: onnx.ModelProto, x: SampleSet | np.ndarray,
                    max_samples: int = 64, candidates: int = 24) -> list[dict]:
    """Activation quantizers of ``qdq``, the one whose removal alone helps the output most first."""
    samples = as_samples(x)
    samples = samples.subset(np.arange(min(max_samples, len(samples))))
    tensors = activation_quantizers(qdq)
    own = _own_sqnr(float_model, qdq, tensors, samples)
    short = sorted((t for t in tensors if t in own), key=own.get)[:candidates]
    out_name = float_model.graph.output[0].name
    ref = _outputs(float_model, out_name, samples)
    base = _sqnr(ref, _outputs(qdq, out_name, samples))
    ranking = []
    for t in short:
        gain = _sqnr(ref, _outputs(remove_quantizers(qdq, [t], float_model), out_name, samples)) - base
        ranking.append({"tensor": t, "output_sqnr_gain_db": round(float(gain), 3), "tensor_sqnr_db": round(float(own[t]), 3)})
    ranking.sort(key=lambda r: -r["output_sqnr_gain_db"])
    return ranking


def _sqnr(signal: np.ndarray, noisy: np.ndarray) -> float:
    noise = float(np.sum((signal.astype(np.float64) - noisy) ** 2))
    return float(10 * np.log10(np.sum(signal.astype(np.float64) ** 2) / noise)) if noise > 0 else float("inf")


def _outputs(model: onnx.ModelProto, name: str, samples: SampleSet) -> np.ndarray:
    parts: list[np.ndarray] = []
    run_batches(model, [name], samples, lambda v: parts.append(v[name]), batch=len(samples))
    return np.concatenate(parts)


def _own_sqnr(float_model: onnx.ModelProto, qdq: onnx.ModelProto, tensors: list[str], samples: SampleSet) -> dict[str, float]:
    """Each tensor's SQNR through its own quantizer alone (the FP32 model's values, quantized and dequantized)."""
    inits = initializers(qdq.graph)
    qparams = {}
    for n in qdq.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in tensors and len(n.input) > 2 and n.input[1] in inits:
            qparams[n.input[0]] = (onnx.numpy_helper.to_array(inits[n.input[1]]),
                                   onnx.numpy_helper.to_array(inits[n.input[2]]))
    float_names = {o for n in float_model.graph.node for o in n.output} | {i.name for i in float_model.graph.input}
    present = [t for t in qparams if t in float_names]
    power = {t: [0.0, 0.0] for t in present}

    def visit(values: dict[str, np.ndarray]) -> None:
        for t in present:
            v = values[t].astype(np.float64)
            power[t][0] += float(np.sum(v ** 2))
            power[t][1] += float(np.sum((v - _qdq(v, *qparams[t])) ** 2))

    run_batches(float_model, present, samples, visit)
    return {t: 10 * np.log10(s / n) if n > 0 else float("inf") for t, (s, n) in power.items() if s > 0}


def _qdq(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    info = np.iinfo(zero_point.dtype)
    q = np.clip(np.rint(x / scale) + zero_point.astype(np.float64), info.min, info.max)
    return (q - zero_point.astype(np.float64)) * scale


def accuracy_aware_fallback(quantize: Callable[[list[str], str], None], float_model: str | Path,
                            out_path: str | Path, evaluate: Callable[[str], float], calib_x: SampleSet | np.ndarray,
                            max_drop: float, max_nodes: int = 10, fp32_accuracy: float | None = None) -> dict:
    """Quantize with ``quantize([], path)``, then remove quantizers by rank (at most ``max_nodes``) until the
    drop fits. Returns the record the report shows: FP32 accuracy, every step, the chosen step, whether
    ``max_drop`` was met, and the ranking."""
    if not callable(evaluate):
        raise StageError("ptq.max_drop is set but no evaluate(onnx_path) -> accuracy callback was given; pass one.")
    fp32 = float(evaluate(str(float_model))) if fp32_accuracy is None else float(fp32_accuracy)
    float_proto = onnx.load(str(float_model))
    steps: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgedistill-fallback-") as tmp:
        paths = [str(Path(tmp) / "step_00.onnx")]
        quantize([], paths[0])
        base = onnx.load(paths[0])

        def judge(removed: list[str], model: onnx.ModelProto | None = None) -> None:
            if model is not None:
                paths.append(str(Path(tmp) / f"step_{len(steps):02d}.onnx"))
                onnx.save(model, paths[-1])
            acc = float(evaluate(paths[-1]))
            steps.append({"quantizers_removed": list(removed), "nodes_in_fp32": nodes_left_fp32(model, base) if model else [],
                          "accuracy": acc, "drop_points": round((fp32 - acc) * 100, 4),
                          "size_mb": round(_io.file_size_mb(paths[-1]), 4)})

        judge([])
        ranking: list[dict] = []
        if steps[0]["drop_points"] > max_drop:
            ranking = rank_quantizers(float_proto, base, calib_x, candidates=max(2 * max_nodes, 16))
            removed: list[str] = []
            for entry in ranking[:max_nodes]:
                removed.append(entry["tensor"])
                judge(removed, remove_quantizers(base, removed, float_proto))
                if steps[-1]["drop_points"] <= max_drop:
                    break
            _time_steps(str(float_model), paths, steps)
        met = [i for i, s in enumerate(steps) if s["drop_points"] <= max_drop]
        chosen = met[0] if met else max(range(len(steps)), key=lambda i: steps[i]["accuracy"])
        _io.atomic_write(out_path, lambda tmp_path: shutil.copyfile(paths[chosen], tmp_path))
    return {"fp32_accuracy": fp32, "max_drop_points": max_drop, "met": bool(met), "chosen_step": chosen,
            "quantizers_removed": steps[chosen]["quantizers_removed"], "nodes_in_fp32": steps[chosen]["nodes_in_fp32"],
            "accuracy": steps[chosen]["accuracy"], "steps": steps, "ranking": ranking[:max(max_nodes, 10)]}


def _time_steps(float_model: str, paths: list[str], steps: list[dict]) -> None:
    """p50 of the FP32 model and of every step's model, timed together (interleaved, 1 thread, batch 1)."""
    from ..bench import benchmark

    timed = benchmark([float_model, *paths], threads=1, runs=50, warmup=5, min_seconds=0.5, ci_tolerance=0)
    p50 = [m["latency_ms"]["p50"] for m in timed["models"]]
    for step, ms in zip(steps, p50[1:]):
        step["p50_ms"] = round(ms, 4)
        step["speedup_p50_vs_fp32"] = round(p50[0] / ms, 3)
