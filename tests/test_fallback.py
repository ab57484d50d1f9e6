"""Accuracy-aware fallback on a graph with a planted sensitive layer, and the deliverable choice."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from edgedistill.errors import StageError
from edgedistill.quant.fallback import accuracy_aware_fallback, rank_quantizers, remove_quantizers
from edgedistill.quant.calibration import ArrayReader

# 7-bit weights: on an x86 CPU without VNNI, ORT's U8S8 kernels (VPMADDUBSW) saturate their 16-bit pair sums with
# full 8-bit weights, which adds CPU-dependent harm to every quantizer; these tests are about which quantizer the
# fallback finds, so their INT8 arithmetic must be exact on every CPU (ONNX Runtime's advice for such CPUs).
REDUCE_RANGE = True


def _mlp(path, planted: float) -> None:
    """x(4) -> fc1(16) -> relu -> fc2(16) -> relu -> fc3(3). ``planted`` scales one fc2 unit up and the
    matching fc3 column down: the FP32 function is unchanged (ReLU commutes with a positive scale) but
    the per-tensor activation range of fc2's output is ruined for INT8."""
    rng = np.random.default_rng(0)
    w1, w2, w3 = (rng.normal(0, 0.7, s).astype(np.float32) for s in ((16, 4), (16, 16), (3, 16)))
    b2 = rng.normal(0, 0.1, 16).astype(np.float32)
    w2[5] *= planted
    b2[5] *= planted
    w3[:, 5] /= planted
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (b2, "b2"), (w3, "w3"))]
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h1"], name="fc1", transB=1),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"], name="fc2", transB=1),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("Gemm", ["r2", "w3"], ["logits"], name="fc3", transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def _predict(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0].argmax(1)


@pytest.fixture
def planted(tmp_path):
    fp32 = tmp_path / "fp32.onnx"
    _mlp(fp32, planted=1000.0)
    rng = np.random.default_rng(1)
    calib = rng.normal(size=(128, 4)).astype(np.float32)
    test_x = rng.normal(size=(400, 4)).astype(np.float32)
    labels = _predict(fp32, test_x)  # the FP32 model is 100 % accurate by construction

    def quantize(exclude, out):
        quantize_static(str(fp32), out, ArrayReader("x", calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        calibrate_method=CalibrationMethod.MinMax, reduce_range=REDUCE_RANGE)

    def evaluate(path):
        return float((_predict(path, test_x) == labels).mean())

    return fp32, calib, quantize, evaluate


def test_fallback_converges_on_planted_sensitive_layer(planted, tmp_path):
    fp32, calib, quantize, evaluate = planted
    out = tmp_path / "int8.onnx"
    # without the planted unit INT8 (7-bit weights) loses 3.5 points on this tiny, tie-prone MLP; with it, about 20
    rec = accuracy_aware_fallback(quantize, fp32, out, evaluate, calib, max_drop=4.0, max_nodes=3)
    assert rec["fp32_accuracy"] == 1.0
    assert rec["steps"][0]["nodes_in_fp32"] == [] and rec["steps"][0]["drop_points"] > 10.0  # INT8 alone fails
    assert rec["met"] and rec["steps"][-1]["drop_points"] <= 4.0
    # one step: the quantizer on the planted tensor goes; its producer and consumer now run in FP32, fc1 not
    assert rec["quantizers_removed"] == ["r2"] and len(rec["steps"]) == 2
    assert set(rec["nodes_in_fp32"]) == {"fc2", "fc3"}
    assert evaluate(str(out)) == rec["accuracy"]
    assert all(s["size_mb"] > 0 and s["p50_ms"] > 0 for s in rec["steps"])
    kept = {n.name for n in onnx.load(out).graph.node if n.op_type == "Gemm"}
    assert kept == {"fc1", "fc2", "fc3"}


def test_rank_puts_the_planted_quantizer_first(planted, tmp_path):
    fp32, calib, quantize, _ = planted
    q = str(tmp_path / "q.onnx")
    quantize([], q)
    ranking = rank_quantizers(onnx.load(fp32), onnx.load(q), calib)
    assert ranking[0]["tensor"] == "r2" and ranking[0]["output_sqnr_gain_db"] > 10
    assert all(r["output_sqnr_gain_db"] < ranking[0]["output_sqnr_gain_db"] - 10 for r in ranking[1:])


def test_removing_a_quantizer_puts_back_the_relu_it_had_folded(planted, tmp_path):
    """ORT drops a ReLU whose output it quantizes (the quantizer's range clips); without that quantizer the
    ReLU must come back, or negative values would reach the next layer."""
    fp32, calib, quantize, _ = planted
    q = str(tmp_path / "q.onnx")
    quantize([], q)
    qdq = onnx.load(q)
    assert "Relu" not in {n.op_type for n in qdq.graph.node}
    unquantized = remove_quantizers(qdq, ["r1", "r2"], onnx.load(fp32))
    assert sum(n.op_type == "Relu" for n in unquantized.graph.node) == 2
    onnx.save(unquantized, tmp_path / "u.onnx")
    x = calib[:64]
    ref = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(tmp_path / "u.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # only the input and the logits stay quantized now: far closer to FP32 than the INT8 model
    int8 = ort.InferenceSession(q, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(got - ref).max() < np.abs(int8 - ref).max() / 10


def test_no_fallback_when_int8_is_already_accurate(tmp_path):
    fp32 = tmp_path / "fp32.onnx"
    _mlp(fp32, planted=1.0)
    rng = np.random.default_rng(2)
    calib, test_x = rng.normal(size=(128, 4)).astype(np.float32), rng.normal(size=(400, 4)).astype(np.float32)
    labels = _predict(fp32, test_x)

    def quantize(exclude, out):
        quantize_static(str(fp32), out, ArrayReader("x", calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        nodes_to_exclude=exclude, reduce_range=REDUCE_RANGE)

    rec = accuracy_aware_fallback(quantize, fp32, tmp_path / "o.onnx",
                                  lambda p: float((_predict(p, test_x) == labels).mean()), calib, max_drop=5.0)
    assert rec["met"] and rec["nodes_in_fp32"] == [] and len(rec["steps"]) == 1 and rec["ranking"] == []


def test_fallback_needs_an_evaluate_callback(planted, tmp_path):
    fp32, calib, quantize, _ = planted
    with pytest.raises(StageError, match="no evaluate"):
        accuracy_aware_fallback(quantize, fp32, tmp_path / "o.onnx", None, calib, max_drop=0.5)


def test_quantize_int8_runs_the_fallback_when_max_drop_is_set(planted, tmp_path):
    from edgedistill.quant.ptq import quantize_int8
    from edgedistill.recipe import PTQConfig

    fp32, calib, _, evaluate = planted
    cfg = PTQConfig(max_drop=3.0, max_fallback_nodes=3, equalize=False,  # equalization would rescue it first
                    reduce_range=REDUCE_RANGE)
    meta = quantize_int8(fp32, tmp_path / "int8.onnx", calib, cfg, evaluate=evaluate)
    fb = meta["fallback"]
    assert fb["met"] and fb["steps"][0]["drop_points"] > 10.0
    assert set(meta["nodes_excluded"]) == set(fb["nodes_in_fp32"]) and "fc1" not in meta["nodes_excluded"]
    assert meta["bias_correction"]["layers"] == 1  # fc2, the one layer with a bias
    assert evaluate(str(tmp_path / "int8.onnx")) >= 0.97
    with pytest.raises(StageError, match="ptq.max_drop is set but no evaluate"):
        quantize_int8(fp32, tmp_path / "x.onnx", calib, cfg)
    # with the defaults, equalization evens out the planted unit's layer: INT8 alone loses less (15.5 against 22.25
    # points with 7-bit weights; the rest is the tiny MLP's ties)
    meta = quantize_int8(fp32, tmp_path / "eq.onnx", calib, PTQConfig(max_drop=3.0, reduce_range=REDUCE_RANGE),
                         evaluate=evaluate)
    assert meta["equalization"]["pairs_equalized"] == 1
    assert meta["fallback"]["steps"][0]["drop_points"] < fb["steps"][0]["drop_points"] * 0.75
