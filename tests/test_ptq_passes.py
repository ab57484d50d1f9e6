"""The graph passes around INT8 PTQ on tiny hand-made graphs: cross-layer equalization keeps the FP32
function and evens out the channels of the tensor between two layers; bias correction takes the
quantization error's mean shift out of the biases."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgedistill.quant.bias_correction import correct_biases
from edgedistill.quant.equalize import equalize
from edgedistill.quant.ptq import quantize_int8
from edgedistill.recipe import PTQConfig


def _convnet(rng, act: str, planted: float, depthwise: bool = False) -> onnx.ModelProto:
    """x(3, 8, 8) -> conv1(8) -> act -> conv2 (8, or depthwise) -> relu -> conv3(4). Channel 2 of conv1 is
    ``planted`` times larger and conv2 takes it back, as a folded BatchNorm with a large gamma leaves it."""
    w1 = rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    w2 = rng.normal(0, 0.5, (8, 1 if depthwise else 8, 3, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 8).astype(np.float32)
    w3 = rng.normal(0, 0.5, (4, 8, 1, 1)).astype(np.float32)
    b3 = np.zeros(4, np.float32)
    w1[2] *= planted
    b1[2] *= planted
    if depthwise:
        w2[2] /= planted
    else:
        w2[:, 2] /= planted
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (w3, "w3"), (b3, "b3"),
              (np.array(0, np.float32), "lo"), (np.array(6 * planted, np.float32), "hi"))]
    first_act = (helper.make_node("Relu", ["c1"], ["a1"]) if act == "relu"
                 else helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"]))
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]), first_act,
             helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1],
                              group=8 if depthwise else 1),
             helper.make_node("Relu", ["c2"], ["a2"]),
             helper.make_node("Conv", ["a2", "w3", "b3"], ["y"], name="conv3")]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, x: np.ndarray, *tensors: str) -> list[np.ndarray]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors)
    opts = ort.SessionOptions()  # the graph's own arithmetic, which the passes are tuned to, on every CPU
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(["y", *tensors], {"x": x})


def _channel_spread(a: np.ndarray) -> float:
    per_channel = np.abs(a).max(axis=(0, 2, 3))
    return float(per_channel.max() / per_channel[per_channel > 0].min())


@pytest.mark.parametrize("act,depthwise", [("relu", False), ("relu", True), ("clip", False)])
def test_equalization_keeps_the_function_and_evens_out_the_channels(act, depthwise):
    rng = np.random.default_rng(0)
    model = _convnet(rng, act, planted=40.0, depthwise=depthwise)
    x = rng.normal(size=(32, 3, 8, 8)).astype(np.float32)
    y0, a0 = _run(model, x, "a1")
    done = equalize(model, x)
    y1, a1 = _run(model, x, "a1")
    assert done["pairs"] == 2 and done["channels_scaled"] > 0  # conv1 -> conv2 and conv2 -> conv3
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-4 * np.abs(y0).max())
    assert _channel_spread(a1) < _channel_spread(a0) / 5


def test_equalization_holds_the_channels_a_clip_clips():
    """Clip(0, hi) is not positive-homogeneous: a channel that reaches hi keeps its scale, the others move."""
    rng = np.random.default_rng(0)
    model = _convnet(rng, "clip", planted=40.0)
    x = rng.normal(size=(32, 3, 8, 8)).astype(np.float32)
    _, c1 = _run(model, x, "c1")
    hi = float(c1[:, 2].max()) / 2  # the planted channel is clipped, the others never reach hi
    model.graph.initializer[-1].CopyFrom(numpy_helper.from_array(np.array(hi, np.float32), "hi"))
    y0, = _run(model, x)
    done = equalize(model, x)
    assert done["pairs_equalized"] >= 1 and done["channels_held_by_clip"] == 1 and done["channels_scaled"] > 0
    np.testing.assert_allclose(_run(model, x)[0], y0, rtol=1e-4, atol=1e-4 * np.abs(y0).max())


def test_equalization_leaves_evenly_spread_channels_alone():
    rng = np.random.default_rng(0)
    model = _convnet(rng, "relu", planted=1.0)
    before = [numpy_helper.to_array(i).copy() for i in model.graph.initializer]
    done = equalize(model, rng.normal(size=(32, 3, 8, 8)).astype(np.float32))
    assert done["pairs"] == 2 and done["pairs_equalized"] == 0 and done["channels_scaled"] == 0
    assert all(np.array_equal(a, numpy_helper.to_array(i)) for a, i in zip(before, model.graph.initializer))


def test_equalization_rescues_int8_on_an_outlier_channel(tmp_path):
    rng = np.random.default_rng(0)
    onnx.save(_convnet(rng, "relu", planted=60.0), tmp_path / "fp32.onnx")
    x = rng.normal(size=(64, 3, 8, 8)).astype(np.float32)
    ref = _run(onnx.load(tmp_path / "fp32.onnx"), x)[0]
    errors = {}
    for eq in (False, True):
        out = tmp_path / f"int8_{eq}.onnx"
        meta = quantize_int8(tmp_path / "fp32.onnx", out, x, PTQConfig(equalize=eq, bias_correction=False, speed_rules=False))
        assert (meta["equalization"] is not None) == eq
        errors[eq] = float(np.abs(_run(onnx.load(out), x)[0] - ref).mean())
    assert errors[True] < errors[False] / 3


def test_bias_correction_removes_the_mean_shift(tmp_path):
    rng = np.random.default_rng(1)
    model = _convnet(rng, "relu", planted=1.0)
    onnx.save(model, tmp_path / "fp32.onnx")
    x = (rng.normal(size=(64, 3, 8, 8)) + 1.0).astype(np.float32)  # inputs with a mean: weight error shifts outputs
    meta = quantize_int8(tmp_path / "fp32.onnx", tmp_path / "plain.onnx", x, PTQConfig(bias_correction=False, speed_rules=False))
    assert meta["bias_correction"] is None
    plain = onnx.load(tmp_path / "plain.onnx")
    corrected = onnx.load(tmp_path / "plain.onnx")
    done = correct_biases(onnx.load(tmp_path / "fp32.onnx"), corrected, x)
    assert done["layers"] == 3 and done["samples"] == 64
    ref = _run(model, x)[0]
    shift = {name: np.abs((_run(m, x)[0] - ref).mean(axis=(0, 2, 3))).max() for name, m in
             (("plain", plain), ("corrected", corrected))}
    assert shift["corrected"] < shift["plain"] / 3
    # the default PTQ applies the same pass
    meta = quantize_int8(tmp_path / "fp32.onnx", tmp_path / "default.onnx", x, PTQConfig(speed_rules=False))
    assert meta["bias_correction"]["layers"] == 3


def test_equalization_skips_a_clip_whose_bound_is_computed():
    """A Clip bound that is not a constant cannot be reasoned about: the pair is left out, nothing fails."""
    rng = np.random.default_rng(0)
    model = _convnet(rng, "clip", planted=40.0)
    clip = next(n for n in model.graph.node if n.op_type == "Clip")
    model.graph.node.insert(0, helper.make_node("Identity", ["lo"], ["lo_computed"]))
    clip.input[1] = "lo_computed"
    done = equalize(model, rng.normal(size=(8, 3, 8, 8)).astype(np.float32))
    assert done["pairs"] == 1  # conv2 -> relu -> conv3 only
