"""ONNX graph plumbing shared by the pre- and post-quantization passes (equalization, bias correction):
initializers by name, who consumes a tensor, and per-channel statistics of intermediate tensors gathered
over calibration samples one batch at a time (memory bounded by the batch, never by the sample count)."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from ..data.core import SampleSet, as_samples
from ..ort_session import PRECISE_INT8, session_options

_STATS_BATCH = 8


def initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in graph.initializer}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def array(inits: dict[str, onnx.TensorProto], name: str) -> np.ndarray:
    return numpy_helper.to_array(inits[name])


def set_array(inits: dict[str, onnx.TensorProto], name: str, value: np.ndarray) -> None:
    """Overwrite initializer ``name`` in place with ``value`` (same dtype as before)."""
    old = inits[name]
    new = numpy_helper.from_array(value.astype(numpy_helper.to_array(old).dtype), name)
    old.CopyFrom(new)


def run_batches(model: onnx.ModelProto, tensors: Iterable[str], samples: SampleSet | np.ndarray,
                visit: Callable[[dict[str, np.ndarray]], None], batch: int = _STATS_BATCH,
                graph_arithmetic: bool = False) -> None:
    """Run ``model`` on ``samples`` with ``tensors`` made graph outputs; ``visit({name: value})`` per batch
    (the graph's input among them when asked for). ``graph_arithmetic``: ONNX Runtime's graph optimizations
    off, so a QDQ graph computes its own arithmetic (DequantizeLinear, float op, QuantizeLinear) instead of
    fused INT8 operators, which round intermediate results their own way."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    input_name = next(i.name for i in m.graph.input if i.name not in initializers(m.graph))
    wanted = list(dict.fromkeys(tensors))
    tensors = [t for t in wanted if t != input_name]
    _prune_to(m.graph, tensors)
    opts = session_options(graph_arithmetic=graph_arithmetic, config=PRECISE_INT8)
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    samples = as_samples(samples)
    for start in range(0, len(samples), batch):
        x = samples.read(np.arange(start, min(start + batch, len(samples))))
        values = dict(zip(tensors, sess.run(tensors, {input_name: x})))
        if input_name in wanted:
            values[input_name] = x
        visit(values)


def _prune_to(graph: onnx.GraphProto, tensors: list[str]) -> None:
    """Make ``tensors`` the graph's outputs and drop the nodes they do not depend on (ONNX Runtime runs every
    node of a graph whatever is fetched; a pass that reads an early layer need not pay for the rest). A graph
    with subgraphs (If, Loop) keeps its nodes, since their outer-scope inputs are not listed."""
    typed = {o.name: o for o in graph.output}
    outputs = [typed[t] if t in typed else onnx.ValueInfoProto(name=t) for t in tensors]
    if not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        needed, keep = set(tensors), []
        for n in reversed(graph.node):  # ONNX keeps nodes in topological order
            if any(o in needed for o in n.output):
                keep.append(n)
                needed.update(n.input)
        del graph.node[:]
        graph.node.extend(reversed(keep))
    copies = [onnx.ValueInfoProto() for _ in outputs]
    for c, o in zip(copies, outputs):
        c.CopyFrom(o)
    del graph.output[:]
    graph.output.extend(copies)


def channel_max(x: np.ndarray) -> np.ndarray:
    """max over every axis but the channel axis (1; the last for 2-D tensors)."""
    axes = tuple(a for a in range(x.ndim) if a != 1)
    return x.max(axis=axes)


def channel_mean(x: np.ndarray) -> tuple[np.ndarray, int]:
    """(sum over every axis but the channel axis, how many values went into each sum)."""
    axes = tuple(a for a in range(x.ndim) if a != 1)
    return x.sum(axis=axes, dtype=np.float64), int(x.size // x.shape[1])
