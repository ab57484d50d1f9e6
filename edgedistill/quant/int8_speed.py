"""Graph rules that keep small INT8 (QDQ) models from running slower than their FP32 selves on
ONNX Runtime's CPU execution provider (issue 20, item 3).

Applied by :func:`edgedistill.quant.ptq.quantize_int8` to the pre-processed graph before ``quantize_static``:

* ``ReduceMean`` over H and W of a 4-D tensor (``keepdims=1``; what ``AdaptiveAvgPool2d(1)`` exports to) is
  rewritten to the identical ``GlobalAveragePool``. ORT has no INT8 ReduceMean: the QDQ graph keeps
  ``DequantizeLinear -> ReduceMean -> QuantizeLinear`` (three nodes run in FP32, plus an NHWC -> NCHW
  Transpose of the whole last feature map before them); GlobalAveragePool fuses to
  ``QLinearGlobalAveragePool``, which runs in the NHWC layout of the QLinearConvs before it.
* The stem convolution (``group`` 1, at most :data:`STEM_MAX_CHANNELS` input channels) stays FP32: its
  reduction depth is ``Cin * kh * kw`` (9 or 27), far below what the INT8 GEMM kernels block on, and
  it runs on the largest feature map; measured 2-3x slower as QLinearConv than as ORT's NCHWc FP32 Conv.
  Its weights are a few hundred bytes, so the file barely grows.
* Depthwise convolutions with at most :data:`DW_MAX_CHANNELS` channels are 1.3-5x slower as QLinearConv
  than in FP32 (16 channels at 64x64: ~5x). A Conv left out of quantization between a DequantizeLinear and a
  QuantizeLinear is quantized again by ORT at session load (its ``WeightBiasQuantization`` transformer,
  ORT >= 1.20), and an FP32 island in the middle pays a DQ, a Transpose, a ReorderInput, a ReorderOutput, a Q
  and a Transpose; so these stay FP32 only as a prefix: every node from the graph input up to the last such
  depthwise Conv stays FP32, and the graph enters INT8 once, after it.
* The classifier head (a ``Gemm`` / ``MatMul`` with a constant weight of at most :data:`HEAD_MAX_WEIGHTS`
  values whose output reaches a graph output through only Add / Reshape / Flatten / Softmax-like nodes)
  stays FP32: a 1 x K x N GEMV of ~1k multiply-adds takes well under a microsecond in FP32, while in INT8 it
  needs a QuantizeLinear before it and a DequantizeLinear after it, each a kernel launch of its own.

The exclusions apply only to convolutional graphs that keep at least one Conv in INT8 after them (an MLP,
or a one-conv model, is left as it was: quantization is what the stage was asked for). Nothing here changes
what the graph computes beyond the INT8 rounding the excluded nodes no longer get.
"""

from __future__ import annotations

import math

from ._graph import attr, consumers, initializers

STEM_MAX_CHANNELS = 4      # a group-1 Conv with at most this many input channels stays FP32
DW_MAX_CHANNELS = 32       # the FP32 prefix runs through the last depthwise Conv with at most this many channels
HEAD_MAX_WEIGHTS = 16384   # a head Gemm / MatMul with at most this many weights (64 KiB in FP32) stays FP32
_HEAD_PASS = {"Add", "Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze", "Softmax", "LogSoftmax"}


def apply(model, enabled: bool = True) -> dict:
    """Rewrite the ``onnx.ModelProto`` in place (ReduceMean -> GlobalAveragePool) and return what to keep in FP32:
    ``{"enabled", "rewrites": [node names], "nodes_in_fp32": [node names], "reasons": {node: why}}``."""
    record = {"enabled": bool(enabled), "rewrites": [], "nodes_in_fp32": [], "reasons": {}}
    if not enabled:
        return record
    record["rewrites"] = _pool_to_gap(model)
    reasons = fp32_nodes(model.graph)
    record["nodes_in_fp32"], record["reasons"] = list(reasons), reasons
    return record


def _shapes(graph) -> dict[str, list]:
    out = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return out


def _pool_to_gap(model) -> list[str]:
    """ReduceMean(axes = H, W of a 4-D input, keepdims = 1) -> GlobalAveragePool; the names rewritten."""
    from onnx import helper, numpy_helper

    graph = model.graph
    shapes, inits = _shapes(graph), initializers(graph)
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    done = []
    for k, node in enumerate(list(graph.node)):
        if node.op_type != "ReduceMean" or len(shapes.get(node.input[0], [])) != 4:
            continue
        if attr(node, "keepdims", 1) != 1:
            continue
        if len(node.input) > 1 and node.input[1]:
            src = node.input[1]
            if src in inits:
                axes = numpy_helper.to_array(inits[src]).tolist()
            elif src in consts:
                axes = numpy_helper.to_array(consts[src].attribute[0].t).tolist()
            else:
                continue
        else:
            axes = attr(node, "axes")
        if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
            continue
        gap = helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name or f"gap_{k}")
        idx = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(idx, gap)
        done.append(gap.name)
    return done


def fp32_nodes(graph) -> dict[str, str]:
    """The nodes to keep in FP32 (name -> reason) by the stem and head rules; empty unless a Conv stays INT8."""
    inits = initializers(graph)
    keep: dict[str, str] = {}
    convs = [n for n in graph.node if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in inits]
    for n in convs:
        w = inits[n.input[1]].dims  # [Cout, Cin / group, kh, kw]
        if n.name and attr(n, "group", 1) == 1 and len(w) >= 3 and w[1] <= STEM_MAX_CHANNELS:
            keep[n.name] = (f"stem Conv with {w[1]} input channel(s): reduction depth {math.prod(w[1:])} is "
                            "below the INT8 kernels' blocking; FP32 NCHWc is faster")
    _dw_prefix(graph, convs, inits, keep)
    if all(n.name in keep for n in convs):  # no Conv (an MLP) or none left in INT8: leave the model as it was
        return {}
    outputs = {o.name for o in graph.output}
    users = consumers(graph)
    for n in graph.node:
        if n.op_type not in ("Gemm", "MatMul") or not n.name or len(n.input) < 2 or n.input[1] not in inits:
            continue
        size = math.prod(inits[n.input[1]].dims)
        if size > HEAD_MAX_WEIGHTS:
            continue
        chain, t = [], n.output[0]
        while t not in outputs:
            nxt = users.get(t, [])
            if len(nxt) != 1 or nxt[0].op_type not in _HEAD_PASS or not nxt[0].name:
                break
            chain.append(nxt[0])
            t = nxt[0].output[0]
        if t in outputs:
            keep[n.name] = (f"classifier head {n.op_type} with {size} weights: the Q / DQ nodes INT8 adds around it "
                            "cost more than the FP32 GEMV")
            for c in chain:
                keep[c.name] = f"after the FP32 head {n.name}"
    return keep


def _dw_prefix(graph, convs: list, inits: dict, keep: dict[str, str]) -> None:
    """Add to ``keep`` every node up to the last depthwise Conv with at most DW_MAX_CHANNELS channels
    (graph order is topological), unless one of them has no name (it could not be excluded)."""
    last = None
    for n in convs:
        w = inits[n.input[1]].dims
        group = attr(n, "group", 1)
        if group > 1 and len(w) >= 2 and w[1] == 1 and group == w[0] and w[0] <= DW_MAX_CHANNELS:
            last = n
    if last is None:
        return
    nodes = list(graph.node)
    prefix = nodes[:nodes.index(last) + 1]
    if any(not n.name for n in prefix):
        return
    for n in prefix:
        keep.setdefault(n.name, f"FP32 prefix up to the depthwise Conv {last.name} ({inits[last.input[1]].dims[0]} "
                                 "channels): INT8 depthwise is slower, and a Conv left FP32 after a DQ is quantized again by ORT")
