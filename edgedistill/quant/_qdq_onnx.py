"""Post-processing of an exported QAT graph into the deployable form ONNX Runtime fuses.

``torch.onnx.export`` writes every fake-quantized weight as ``FP32 initializer -> QuantizeLinear
-> DequantizeLinear``: correct, but the file is as big as the FP32 one. Here each such weight is
quantized once, offline, with ORT's own arithmetic (``saturate(rint(w / scale) + zero_point)``,
round half to even), stored as an INT8 initializer feeding the DequantizeLinear directly, and the
FP32 copy is dropped. Biases of Conv/Gemm whose input and weight are both dequantized become INT32
initializers with ``scale = input_scale * weight_scale``, as ORT's own quantizer writes them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

_QRANGE = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}


def _axis(node: onnx.NodeProto) -> int:
    for a in node.attribute:
        if a.name == "axis":
            return int(helper.get_attribute_value(a))
    return 1


def _broadcast(v: np.ndarray, rank: int, axis: int) -> np.ndarray:
    if v.ndim == 0 or v.size == 1:
        return v.reshape(())
    shape = [1] * rank
    shape[axis] = v.size
    return v.reshape(shape)


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def quantize_weights_(model: onnx.ModelProto) -> int:
    """Replace every ``FP32 initializer -> QuantizeLinear`` by an INT8 initializer; return the count."""
    graph = model.graph
    consts = _constants(graph)
    init_names = {i.name for i in graph.initializer}
    rename: dict[str, str] = {}
    keep = []
    new_inits = []
    for n in graph.node:
        if (n.op_type == "QuantizeLinear" and n.input[0] in init_names and len(n.input) >= 3
                and n.input[1] in consts and n.input[2] in consts):
            w = consts[n.input[0]].astype(np.float32)
            scale, zp = consts[n.input[1]].astype(np.float32), consts[n.input[2]]
            qmin, qmax = _QRANGE[zp.dtype]
            axis = _axis(n) % max(w.ndim, 1)
            q = np.rint(w / _broadcast(scale, w.ndim, axis)) + _broadcast(zp.astype(np.float32), w.ndim, axis)
            q = np.clip(q, qmin, qmax).astype(zp.dtype)
            name = n.input[0] + "_quantized"
            new_inits.append(numpy_helper.from_array(q, name))
            rename[n.output[0]] = name
            continue
        keep.append(n)
    for n in keep:
        for i, x in enumerate(n.input):
            if x in rename:
                n.input[i] = rename[x]
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(new_inits)
    _drop_unused_(graph)
    return len(new_inits)


def quantize_biases_(model: onnx.ModelProto) -> int:
    """Store Conv/Gemm biases as INT32 + DequantizeLinear when input and weight are dequantized."""
    graph = model.graph
    consts = _constants(graph)
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name for i in graph.initializer}
    added_nodes, added_inits, count = [], [], 0
    for n in graph.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3 or n.input[2] not in inits:
            continue
        dq_x, dq_w = producer.get(n.input[0]), producer.get(n.input[1])
        if not (dq_x and dq_w and dq_x.op_type == dq_w.op_type == "DequantizeLinear"):
            continue
        if dq_x.input[1] not in consts or dq_w.input[1] not in consts:
            continue
        sx = consts[dq_x.input[1]].astype(np.float32)
        sw = consts[dq_w.input[1]].astype(np.float32).reshape(-1)
        if sx.size != 1:
            continue
        b = consts[n.input[2]].astype(np.float32)
        bscale = (sx.reshape(()) * sw).astype(np.float32)
        if bscale.size == 1:
            bscale = np.full(b.shape, bscale.reshape(()), np.float32)
        bq = np.clip(np.rint(b / bscale), -(2**31), 2**31 - 1).astype(np.int32)
        base = n.input[2]
        added_inits += [numpy_helper.from_array(bq, base + "_quantized"),
                        numpy_helper.from_array(bscale, base + "_quantized_scale"),
                        numpy_helper.from_array(np.zeros(b.shape, np.int32), base + "_quantized_zero_point")]
        added_nodes.append(helper.make_node("DequantizeLinear", [base + "_quantized", base + "_quantized_scale",
                                            base + "_quantized_zero_point"], [base + "_dequantized"],
                                            name=base + "_DequantizeLinear", axis=0))
        n.input[2] = base + "_dequantized"
        count += 1
    graph.initializer.extend(added_inits)
    # DequantizeLinear nodes go first so the graph stays topologically sorted
    nodes = added_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused_(graph)
    return count


def scalar_qparams_(model: onnx.ModelProto) -> None:
    """Make one-element per-tensor scales / zero points true scalars (what ORT's fusions look for)."""
    graph = model.graph
    qparams = {x for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for x in n.input[1:3]}
    for init in graph.initializer:
        if init.name in qparams and len(init.dims) == 1 and init.dims[0] == 1:
            arr = numpy_helper.to_array(init).reshape(())
            init.CopyFrom(numpy_helper.from_array(arr, init.name))


def strip_debug_info_(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node debug metadata (stack traces, module paths): often larger than INT8 weights."""
    for n in model.graph.node:
        del n.metadata_props[:]
        n.doc_string = ""
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        del vi.metadata_props[:]
    for init in model.graph.initializer:
        del init.metadata_props[:]


def _drop_unused_(graph: onnx.GraphProto) -> None:
    used = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(nodes)


def int8_initializer_count(model: onnx.ModelProto) -> dict[str, int]:
    """How many initializer elements each element type holds: the check that weights are INT8."""
    out: dict[str, int] = {}
    for i in model.graph.initializer:
        t = onnx.TensorProto.DataType.Name(i.data_type).lower()
        out[t] = out.get(t, 0) + int(np.prod(i.dims))  # a scalar's empty dims give 1
    return out
