"""An ONNX file looked into without running it: :func:`check_onnx` (``onnx.checker`` and the opset range, before
any file a user gives is used) and :func:`inspect_model` (parameters, MACs, size, operator histogram, quantized
share, inputs/outputs).

Uses ``onnx`` only (no torch, no onnxruntime session). MACs count the multiply-accumulates of the
compute operators (Conv, ConvTranspose, MatMul, Gemm and their integer / QLinear forms) for one
sample: dynamic dimensions are set to 1 (batch) and ``seq_len`` (any other) before shape inference.
Element-wise operators, pooling and normalisation are not counted (as in most MAC counters).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

from ._io import file_size_mb
from .errors import DataError

MIN_OPSET = 7  # ONNX Runtime only guarantees support from opset 7 on


def check_onnx(path: str | os.PathLike, what: str = "model"):
    """Validate an ONNX file with ``onnx.checker`` and check its opset; return the loaded ModelProto.

    ``.ort`` files (ORT's own flatbuffer format) are left to ONNX Runtime and return None.
    """
    import onnx

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: {what} file not found; check the path.")
    if p.suffix == ".ort":
        return None
    try:
        onnx.checker.check_model(str(p))  # by path: models over 2 GB and external data work too
        model = onnx.load(str(p))
    except Exception as e:  # ValidationError, protobuf DecodeError, missing external data...
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise DataError(f"{p}: not a valid ONNX {what} ({detail}); pass an .onnx file exported with "
                        "torch.onnx.export or re-export it.") from None
    opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    newest = onnx.defs.onnx_opset_version()
    version = opsets.get("ai.onnx")
    if version is not None and not MIN_OPSET <= version <= newest:
        raise DataError(f"{p}: uses ONNX opset {version}, outside the {MIN_OPSET}..{newest} that this onnx / "
                        "onnxruntime support; re-export it with an opset in that range (17 is a safe choice).")
    return model


_CONV = {"Conv", "ConvInteger", "QLinearConv"}
_MATMUL = {"MatMul", "MatMulInteger", "QLinearMatMul", "Gemm", "QGemm", "DynamicQuantizeMatMul",
           "MatMulIntegerToFloat", "MatMulNBits"}
COMPUTE_OPS = _CONV | _MATMUL | {"ConvTranspose"}
_INT_COMPUTE = {"ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul", "QGemm",
                "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits"}
_QDQ = {"QuantizeLinear", "DequantizeLinear"}
# input positions of the activation and the weight of each compute op (QLinear ops interleave scales)
_DATA_INPUTS = {"QLinearConv": (0, 3), "QLinearMatMul": (0, 3), "QGemm": (0, 3)}


def inspect_model(path: str, *, seq_len: int = 32) -> dict:
    """Parameters, MACs, file size, operator histogram, quantized share and IO of one ONNX file."""
    import onnx

    model = _load(path)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = list(_all_nodes(graph))
    hist = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}:{n.op_type}" for n in nodes)
    producer = {o: n for n in nodes for o in n.output}
    qparams = {n.input[i] for n in nodes if n.op_type in _QDQ for i in (1, 2) if i < len(n.input)}
    params = sum(_numel(t) for name, t in inits.items() if name not in qparams)
    shapes = _shapes(model, seq_len)

    compute, quantized, macs, qmacs = 0, 0, 0, 0
    for n in nodes:
        if n.op_type not in COMPUTE_OPS:
            continue
        compute += 1
        m = _macs(n, shapes) or 0
        macs += m
        if _is_quantized(n, producer):
            quantized += 1
            qmacs += m
    qdq_nodes = sum(hist[op] for op in _QDQ)
    return {
        "path": str(path),
        "size_mb": round(file_size_mb(path), 6),
        "params": params,
        "initializer_bytes": sum(_nbytes(t) for t in inits.values()),
        "macs": macs,
        "nodes": len(nodes),
        "op_histogram": dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))),
        "compute_ops": compute,
        "quantized_ops": quantized,
        "quantized_share": round(quantized / compute, 4) if compute else 0.0,
        "quantized_mac_share": round(qmacs / macs, 4) if macs else 0.0,
        "format": "QDQ" if qdq_nodes else ("QOperator" if quantized else "float"),
        "inputs": [_io(v) for v in graph.input if v.name not in inits],
        "outputs": [_io(v) for v in graph.output],
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "metadata_props": {p.key: p.value for p in model.metadata_props},
        "onnx": onnx.__version__,
    }


def _load(path: str):
    import onnx

    model = check_onnx(path)  # existence, onnx.checker and the opset range before anything reads it
    if model is not None:
        return model
    try:  # an .ort file, which check_onnx leaves alone
        return onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends
        raise DataError(f"{path}: not a readable ONNX model ({type(e).__name__}); pass an .onnx file.") from None


def _all_nodes(graph):
    for n in graph.node:
        yield n
        for a in n.attribute:  # If / Loop / Scan bodies
            if a.g.node:
                yield from _all_nodes(a.g)
            for g in a.graphs:
                yield from _all_nodes(g)


def _numel(t) -> int:
    return math.prod(t.dims) if t.dims else 1


def _nbytes(t) -> int:
    import onnx

    if t.raw_data:
        return len(t.raw_data)
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return _numel(t) * itemsize


def _dims(type_proto) -> list:
    if not type_proto.tensor_type.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in type_proto.tensor_type.shape.dim]


def _io(v) -> dict:
    import onnx

    elem = v.type.tensor_type.elem_type
    return {"name": v.name, "shape": _dims(v.type),
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "unknown"}


def _shapes(model, seq_len: int) -> dict[str, list[int]]:
    """name -> static shape, after fixing dynamic input dims (first -> 1, others -> seq_len)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for v in m.graph.input:
        if not v.type.tensor_type.HasField("shape"):
            continue
        for i, d in enumerate(v.type.tensor_type.shape.dim):
            if not d.HasField("dim_value"):
                d.dim_value = 1 if i == 0 else seq_len
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # inference is best effort: ops it cannot type leave their MACs uncounted
        pass
    out = {t.name: list(t.dims) for t in m.graph.initializer}
    for v in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        dims = _dims(v.type)
        if dims and all(isinstance(d, int) and d > 0 for d in dims):
            out[v.name] = dims
    return out


def _macs(node, shapes) -> int | None:
    a_i, w_i = _DATA_INPUTS.get(node.op_type, (0, 1))
    if len(node.input) <= w_i:
        return None
    w, y = shapes.get(node.input[w_i]), shapes.get(node.output[0])
    if node.op_type in _CONV:
        if not w or not y:
            return None
        return math.prod(y) * math.prod(w[1:])  # out elements x (C_in/group x kh x kw)
    if node.op_type == "ConvTranspose":
        x = shapes.get(node.input[a_i])
        if not w or not x:
            return None
        return math.prod(x) * math.prod(w[1:])  # in elements x (C_out/group x kh x kw); W is [C_in, C_out/g, k..]
    a = shapes.get(node.input[a_i])
    if not a or not y:
        return None
    if node.op_type in ("Gemm", "QGemm"):
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        k = a[0] if trans_a else a[-1]
    else:
        k = a[-1]
    return math.prod(y) * k


def _is_quantized(node, producer) -> bool:
    """An integer op, or (QDQ format) a float op whose activation and weight both come from DequantizeLinear."""
    if node.op_type in _INT_COMPUTE:
        return True
    a_i, w_i = _DATA_INPUTS.get(node.op_type, (0, 1))
    if len(node.input) <= w_i:
        return False
    src = [producer.get(node.input[i]) for i in (a_i, w_i)]
    return all(s is not None and s.op_type == "DequantizeLinear" for s in src)
