"""Tiny ONNX models built with onnx.helper for the bench / bundle / inspect tests (no torch needed)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _save(path, opset: int, graph):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def mlp(path, *, hidden: int = 16, in_features: int = 8, classes: int = 3, opset: int = 17, seed: int = 0):
    """x[N, in] -> MatMul -> Add -> Relu -> MatMul -> Add -> logits[N, classes], batch dim dynamic."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((in_features, hidden)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((hidden, classes)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
        helper.make_node("Add", ["h3", "b2"], ["logits"]),
    ]
    return _save(path, opset, helper.make_graph(nodes, "mlp", [_vi("x", ["batch", in_features])],
                                                [_vi("logits", ["batch", classes])], inits))


def conv(path, *, channels: int = 4, size: int = 8, classes: int = 5, opset: int = 17, seed: int = 0):
    """x[N, 1, size, size] -> Conv 3x3 (pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> logits."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((channels, 1, 3, 3)).astype(np.float32), "cw"),
        numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "cb"),
        numpy_helper.from_array(rng.standard_normal((classes, channels)).astype(np.float32), "fw"),
        numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1),
    ]
    return _save(path, opset, helper.make_graph(nodes, "conv", [_vi("x", ["batch", 1, size, size])],
                                                [_vi("logits", ["batch", classes])], inits))


def token_model(path, *, vocab: int = 200, dim: int = 8, opset: int = 17, seed: int = 0):
    """input_ids[N, L] int64 and attention_mask[N, L] -> Gather embedding, masked mean -> pooled[N, dim]."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, dim)).astype(np.float32), "emb"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "neg1"], ["m3"]),
        helper.make_node("Mul", ["e", "m3"], ["em"]),
        helper.make_node("ReduceSum", ["em", "axis1"], ["s"], keepdims=0),
        helper.make_node("ReduceSum", ["m3", "axis1"], ["cnt"], keepdims=0),
        helper.make_node("Div", ["s", "cnt"], ["pooled"]),
    ]
    inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "neg1"))
    return _save(path, opset, helper.make_graph(
        nodes, "tok",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", dim])], inits))


def qdq_matmul(path, *, k: int = 6, n: int = 4, opset: int = 17, seed: int = 0):
    """QDQ format by hand: x -> Q -> DQ, int8 weight -> DQ, MatMul, then a float Add (bias) -> y[N, n]."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.integers(-127, 128, size=(k, n)).astype(np.int8), "w_q"),
        numpy_helper.from_array(np.array(0.05, dtype=np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, dtype=np.int8), "w_zp"),
        numpy_helper.from_array(np.array(0.02, dtype=np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, dtype=np.int8), "x_zp"),
        numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["mm"]),
        helper.make_node("Add", ["mm", "bias"], ["y"]),
    ]
    return _save(path, opset, helper.make_graph(nodes, "qdq", [_vi("x", ["batch", k])], [_vi("y", ["batch", n])],
                                                inits))
