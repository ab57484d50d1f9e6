"""Cross-layer equalization before INT8 (Nagel et al. 2019, "Data-Free Quantization"), on the FP32 ONNX graph.

For two layers in a row -- a Conv or Gemm ``A`` whose output goes, alone or through a ReLU / LeakyReLU /
Clip(0, hi) (ReLU6), to the input of the Conv or Gemm ``B`` -- channel ``i`` of ``A``'s output is divided
by ``s_i`` (its weights and bias) and ``B``'s weights on input channel ``i`` are multiplied by ``s_i``.
ReLU and LeakyReLU are positive-homogeneous, so the network computes the same function. Depthwise and
grouped convolutions take part on either side (a channel's weights are its own filter).

Where the paper balances the two layers' *weight* ranges (it quantizes weights per tensor), edgedistill
quantizes weights per output channel, so ``A``'s own weights gain nothing; what suffers is the tensor
between the layers, quantized with one scale for all its channels. So the ranges balanced here are the
intermediate tensor's per-channel ranges, measured on the calibration samples, against ``B``'s
per-input-channel weight ranges: ``s_i = c * sqrt(act_i / w_i)``, with ``c`` keeping the tensor's widest
channel where it was. That is the same balance SmoothQuant (Xiao et al. 2023) strikes for transformer
MatMuls, with the division folded into the previous layer instead of a separate Mul.

Only pairs whose tensor is dominated by a few channels are touched: the widest channel at least
``_MIN_SPREAD`` times the median one. Elsewhere one scale already serves every channel about equally
and moving weights about only costs the second layer weight precision (on EfficientNet-Lite0, whose
widest channels are at most 3.3 times the median, equalizing every pair lowered the agreement with
FP32 slightly; the outlier channels of a folded BatchNorm are 40-60 times the median).

Clip(0, hi) is not positive-homogeneous: a channel whose pre-activation reaches ``hi`` on the calibration
samples keeps ``s_i = 1``, and no channel is scaled up past ``hi`` (with a margin), so the clip keeps
clipping exactly what it clipped before on those samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..data.core import SampleSet
from ._graph import array, attr, channel_max, consumers, initializers, run_batches, set_array

_HOMOGENEOUS = ("Relu", "LeakyRelu")
_CLIP_MARGIN = 1.25  # a channel scaled up keeps its calibration maximum below hi / margin
_MAX_SCALE = 100.0   # s_i within [1/100, 100]: no channel's weights moved by more than that
_MIN_SPREAD = 8.0    # widest / median channel range from which a pair is equalized


@dataclass
class _Pair:
    a: onnx.NodeProto
    b: onnx.NodeProto
    act: onnx.NodeProto | None
    clip_hi: float | None  # the upper bound of a Clip(0, hi) between them


def equalize(model: onnx.ModelProto, calib: SampleSet | np.ndarray) -> dict:
    """Equalize every eligible layer pair of ``model`` in place; returns what was done (for ``meta.json``)."""
    graph = model.graph
    inits = initializers(graph)
    pairs = _pairs(graph, inits)
    if not pairs:
        return {"pairs": 0, "pairs_equalized": 0, "channels_scaled": 0, "channels_held_by_clip": 0}
    post = {p.a.output[0] if p.act is None else p.act.output[0] for p in pairs}
    pre = {p.a.output[0] for p in pairs if p.clip_hi is not None}
    ranges: dict[str, np.ndarray] = {}

    def visit(values: dict[str, np.ndarray]) -> None:
        for name, v in values.items():
            m = channel_max(np.abs(v)) if name in post else channel_max(v)
            ranges[name] = m if name not in ranges else np.maximum(ranges[name], m)

    run_batches(model, sorted(post | pre), calib, visit)
    scaled = held = equalized = 0
    for p in pairs:
        act_range = ranges[p.a.output[0] if p.act is None else p.act.output[0]].astype(np.float64)
        w_b = array(inits, p.b.input[1]).astype(np.float64)
        w_range = _input_channel_ranges(p.b, w_b)
        ok = (act_range > 0) & (w_range > 0)
        if not ok.any() or act_range[ok].max() < _MIN_SPREAD * np.median(act_range[ok]):
            continue
        equalized += 1
        s = np.ones_like(act_range)
        s[ok] = np.sqrt(act_range[ok] / w_range[ok])
        s[ok] *= (act_range[ok] / s[ok]).max() / act_range[ok].max()  # the widest channel stays where it was
        if p.clip_hi is not None:
            reaches = ranges[p.a.output[0]] >= p.clip_hi * 0.999
            held += int((reaches & ok).sum())
            s[reaches] = 1.0
            s = np.maximum(s, np.where(reaches, 1.0, ranges[p.a.output[0]] * _CLIP_MARGIN / p.clip_hi))
        s = np.clip(np.where(ok, s, 1.0), 1 / _MAX_SCALE, _MAX_SCALE)
        _scale_outputs(p.a, inits, 1.0 / s)
        _scale_inputs(p.b, inits, s)
        scaled += int((np.abs(s - 1) > 1e-6).sum())
    return {"pairs": len(pairs), "pairs_equalized": equalized, "channels_scaled": scaled, "channels_held_by_clip": held}


def _pairs(graph: onnx.GraphProto, inits: dict) -> list[_Pair]:
    """Eligible (A, [activation], B) chains in graph order; each weight used by one node only."""
    users = consumers(graph)
    outputs = {o.name for o in graph.output}

    def only_user(tensor: str):
        nxt = users.get(tensor, [])
        return nxt[0] if len(nxt) == 1 and tensor not in outputs else None

    def weighted(n) -> bool:
        if n.op_type == "Conv":
            ok = len(n.input) > 1 and n.input[1] in inits
        elif n.op_type == "Gemm":
            ok = (len(n.input) > 1 and n.input[1] in inits and attr(n, "alpha", 1.0) == 1.0
                  and attr(n, "beta", 1.0) == 1.0 and not attr(n, "transA", 0))
        else:
            return False
        return ok and all(len(users.get(w, [])) == 1 for w in n.input[1:] if w)

    found = []
    for a in graph.node:
        if not weighted(a) or (len(a.input) > 2 and a.input[2] and a.input[2] not in inits):
            continue
        nxt = only_user(a.output[0])
        act, hi = None, None
        if nxt is not None and nxt.op_type in _HOMOGENEOUS + ("Clip",):
            if nxt.op_type == "Clip":
                bounds = _clip_bounds(nxt, inits)
                if bounds is None or bounds[0] != 0.0:
                    continue
                hi = bounds[1] if np.isfinite(bounds[1]) else None
            act, nxt = nxt, only_user(nxt.output[0])
        if nxt is None or not weighted(nxt) or nxt.input[0] != (act or a).output[0]:
            continue
        if _out_channels(a, inits) != _in_channels(nxt, inits):
            continue
        found.append(_Pair(a, nxt, act, hi))
    return found


def _clip_bounds(node: onnx.NodeProto, inits: dict) -> tuple[float, float] | None:
    """(lo, hi) of a Clip whose bounds are constants (absent: unbounded); None when a bound is computed."""
    if len(node.input) == 1:  # opset < 11: bounds are attributes
        return float(attr(node, "min", -np.inf)), float(attr(node, "max", np.inf))
    names = [node.input[i] if len(node.input) > i else "" for i in (1, 2)]
    if any(n and n not in inits for n in names):
        return None
    lo, hi = (float(array(inits, n)) if n else default for n, default in zip(names, (-np.inf, np.inf)))
    return lo, hi


def _out_channels(n: onnx.NodeProto, inits: dict) -> int:
    w = inits[n.input[1]].dims
    return int(w[0]) if n.op_type == "Conv" or attr(n, "transB", 0) else int(w[1])


def _in_channels(n: onnx.NodeProto, inits: dict) -> int:
    w = inits[n.input[1]].dims
    if n.op_type == "Conv":
        return int(w[1]) * int(attr(n, "group", 1))
    return int(w[1]) if attr(n, "transB", 0) else int(w[0])


def _input_channel_ranges(b: onnx.NodeProto, w: np.ndarray) -> np.ndarray:
    """max |weight| that touches each input channel of ``b``."""
    if b.op_type == "Gemm":
        return np.abs(w).max(axis=0) if attr(b, "transB", 0) else np.abs(w).max(axis=1)
    group, cin_g = int(attr(b, "group", 1)), w.shape[1]
    per_group = np.abs(w).reshape(group, w.shape[0] // group, cin_g, -1).max(axis=(1, 3))  # [group, cin_g]
    return per_group.reshape(-1)


def _scale_outputs(a: onnx.NodeProto, inits: dict, f: np.ndarray) -> None:
    """Multiply output channel ``i`` of ``a`` by ``f[i]`` (its weights and its bias)."""
    w = array(inits, a.input[1]).astype(np.float64)
    if a.op_type == "Conv" or attr(a, "transB", 0):
        w = w * f.reshape(-1, *[1] * (w.ndim - 1))
    else:
        w = w * f.reshape(1, -1)
    set_array(inits, a.input[1], w)
    if len(a.input) > 2 and a.input[2]:
        set_array(inits, a.input[2], array(inits, a.input[2]).astype(np.float64) * f)


def _scale_inputs(b: onnx.NodeProto, inits: dict, s: np.ndarray) -> None:
    """Multiply ``b``'s weights on input channel ``i`` by ``s[i]``."""
    w = array(inits, b.input[1]).astype(np.float64)
    if b.op_type == "Gemm":
        w = w * (s.reshape(1, -1) if attr(b, "transB", 0) else s.reshape(-1, 1))
    else:
        group, cout, cin_g = int(attr(b, "group", 1)), w.shape[0], w.shape[1]
        per = s.reshape(group, 1, cin_g)  # input channel g * cin_g + j -> group g, column j
        w = (w.reshape(group, cout // group, cin_g, -1) * per[..., None]).reshape(w.shape)
    set_array(inits, b.input[1], w)
