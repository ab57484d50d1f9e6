"""The INT8 speed rules (edgedistill.quant.int8_speed): ReduceMean -> GlobalAveragePool, stem Conv and
classifier head kept in FP32, nothing changed for graphs without a Conv left in INT8. No timing here."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_models
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgedistill.quant import int8_speed
from edgedistill.quant.ptq import quantize_int8
from edgedistill.recipe import PTQConfig


def _two_conv(path, opset: int = 18):
    """x[N,1,8,8] -> stem Conv(1->8) -> Relu -> Conv(8->8) -> Relu -> ReduceMean(H, W) -> Reshape -> Gemm(8->5)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "w1"), (rng.standard_normal(8).astype(np.float32), "b1"),
        (rng.standard_normal((8, 8, 3, 3)).astype(np.float32) / 3, "w2"), (rng.standard_normal(8).astype(np.float32), "b2"),
        (np.array([-1, -2], np.int64), "axes"), (np.array([-1, 8], np.int64), "shape"),
        (rng.standard_normal((5, 8)).astype(np.float32), "fw"), (rng.standard_normal(5).astype(np.float32), "fb"))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="stem", pads=[1] * 4, kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="body", pads=[1] * 4, kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("ReduceMean", ["r2", "axes"], ["m"], name="pool", keepdims=1),
             helper.make_node("Reshape", ["m", "shape"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], name="head", transB=1)]
    graph = helper.make_graph(nodes, "two_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _int8_weights_of(path) -> set[str]:
    """Names of the nodes whose weight input comes from an INT8 DequantizeLinear."""
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    dq = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in dq
            and inits.get(dq[n.input[1]].input[0], np.zeros(0, np.float32)).dtype == np.int8}


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_rules_on_a_small_cnn(tmp_path):
    fp32 = _two_conv(tmp_path / "fp32.onnx")
    x = np.random.default_rng(1).normal(size=(64, 1, 8, 8)).astype(np.float32)
    meta = quantize_int8(fp32, tmp_path / "int8.onnx", x, PTQConfig())
    speed = meta["int8_speed"]
    assert speed["rewrites"] == ["pool"] and set(speed["nodes_in_fp32"]) == {"stem", "head"}
    assert {"stem", "head"} <= set(meta["nodes_excluded"]) and all(speed["reasons"].values())
    assert _int8_weights_of(tmp_path / "int8.onnx") == {"body"}  # only the body conv carries INT8 weights
    ops = [n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node]
    assert "ReduceMean" not in ops and "GlobalAveragePool" in ops
    # what ONNX Runtime runs: the pool fuses into the INT8 chain, the head is a plain FP32 Gemm
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(tmp_path / "int8.onnx"), so, providers=["CPUExecutionProvider"])
    run_ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert "QLinearConv" in run_ops and "QLinearGlobalAveragePool" in run_ops
    assert "ReduceMean" not in run_ops and "QGemm" not in run_ops
    got, want = _run(tmp_path / "int8.onnx", x), _run(fp32, x)
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.9


def test_pool_rewrite_is_exact(tmp_path):
    fp32 = _two_conv(tmp_path / "fp32.onnx")
    rewritten = tmp_path / "gap.onnx"
    rewritten.write_bytes(fp32.read_bytes())
    model = onnx.shape_inference.infer_shapes(onnx.load(str(rewritten)))
    assert int8_speed.apply(model)["rewrites"] == ["pool"]
    onnx.save(model, str(rewritten))
    x = np.random.default_rng(2).normal(size=(16, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, x), _run(fp32, x), rtol=1e-5, atol=1e-5)


def test_disabled_and_graphs_left_alone(tmp_path):
    fp32 = _two_conv(tmp_path / "fp32.onnx")
    assert int8_speed.apply(onnx.load(str(fp32)), enabled=False) == {"enabled": False, "rewrites": [], "nodes_in_fp32": [],
                                                                     "reasons": {}}
    # no Conv (an MLP) and a single stem conv: nothing is kept in FP32, the stage still quantizes every layer
    for model in (onnx_models.mlp(tmp_path / "mlp.onnx"), onnx_models.conv(tmp_path / "conv.onnx", channels=8)):
        assert int8_speed.fp32_nodes(onnx.load(str(model)).graph) == {}
    conv = tmp_path / "conv.onnx"
    x = np.random.default_rng(0).normal(size=(32, 1, 8, 8)).astype(np.float32)
    meta = quantize_int8(conv, tmp_path / "q.onnx", x, PTQConfig())
    assert meta["nodes_excluded"] == [] and meta["int8_speed"]["nodes_in_fp32"] == []


@pytest.mark.parametrize("keepdims,axes", [(0, [2, 3]), (1, [1, 2])])
def test_pool_rewrite_only_for_spatial_keepdims(tmp_path, keepdims, axes):
    g = helper.make_graph([helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="rm", keepdims=keepdims)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.array(axes, np.int64), "axes")])
    model = onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))
    assert int8_speed._pool_to_gap(model) == []


def test_depthwise_prefix_stays_fp32(tmp_path):
    """stem Conv -> Relu -> depthwise Conv(8) -> Relu -> pointwise Conv(8->16) -> ...: the graph enters INT8 at the
    pointwise conv; every node up to the depthwise conv (the Relu between too) is excluded, so no DQ -> Conv -> Q is
    left for ORT to quantize again at load."""
    rng = np.random.default_rng(0)
    arrays = {"w1": rng.standard_normal((8, 1, 3, 3)), "wd": rng.standard_normal((8, 1, 3, 3)),
              "wp": rng.standard_normal((16, 8, 1, 1)) / 3, "axes": np.array([2, 3]), "shape": np.array([-1, 16]),
              "fw": rng.standard_normal((5, 16))}
    inits = [numpy_helper.from_array(a.astype(np.int64 if k in ("axes", "shape") else np.float32), k) for k, a in arrays.items()]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="stem", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "wd"], ["c2"], name="dw", pads=[1] * 4, group=8),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "wp"], ["c3"], name="pw"),
             helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
             helper.make_node("ReduceMean", ["r3", "axes"], ["m"], name="pool"),
             helper.make_node("Reshape", ["m", "shape"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw"], ["logits"], name="head", transB=1)]
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    x = rng.normal(size=(32, 1, 8, 8)).astype(np.float32)
    meta = quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", x, PTQConfig())
    assert set(meta["int8_speed"]["nodes_in_fp32"]) == {"stem", "relu1", "dw", "head"}  # up to the depthwise conv
    assert _int8_weights_of(tmp_path / "int8.onnx") == {"pw"}
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(tmp_path / "int8.onnx"), so, providers=["CPUExecutionProvider"])
    run_ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert run_ops.count("QLinearConv") == 1 and "QGemm" not in run_ops  # the depthwise conv was not requantized
