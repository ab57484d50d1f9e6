"""PTQ options of ``quantize_int8``: S8S8 by default, U8S8, reduce_range, the histogram calibration cap."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import onnx_models
import pytest
from onnx import numpy_helper

from edgedistill._machine import int8_dot_exact
from edgedistill.quant import ptq
from edgedistill.quant.calibration import calibration_sample
from edgedistill.quant.ptq import quantize_int8
from edgedistill.recipe import PTQConfig


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("ptq")
    path = onnx_models.conv(d / "conv.onnx", channels=8, size=8)
    x = np.random.default_rng(0).normal(size=(64, 1, 8, 8)).astype(np.float32)
    return path, x


def _quantized(path) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """(INT8 weight initializers, activation zero points, op types) of a QDQ model."""
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weights = [inits[n.input[0]] for n in graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
    zps = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    return weights, zps, [n.op_type for n in graph.node]


@pytest.mark.parametrize("kw,act_dtype,wmax", [({}, np.int8, 127), ({"activation_type": "uint8"}, np.uint8, 127),
                                               ({"reduce_range": True}, np.int8, 64)])
def test_activation_type_and_reduce_range(conv_model, tmp_path, kw, act_dtype, wmax):
    fp32, x = conv_model
    out = tmp_path / "q.onnx"
    meta = quantize_int8(fp32, out, x, PTQConfig(**kw))
    weights, zps, ops = _quantized(out)
    assert len(weights) == 2 and zps and all(z.dtype == act_dtype for z in zps)
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == wmax  # symmetric: the largest |w| maps to wmax
    assert "ConvInteger" not in ops and "DynamicQuantizeLinear" not in ops
    assert meta["activation_type"] == PTQConfig(**kw).activation_type and meta["reduce_range"] == bool(kw.get("reduce_range"))
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.9
    kernels = meta["kernels_vs_graph"]  # edgedistill's session against the graph's arithmetic: exact on every CPU
    assert kernels["samples"] == 64 and set(kernels["isa"]) >= {"avx2", "arm_dotprod"}
    assert kernels["top1_agreement"] == 1.0 and (kernels["output_sqnr_db"] is None or kernels["output_sqnr_db"] > 40)
    if kw.get("reduce_range") and not int8_dot_exact(kernels["isa"]):  # 7-bit weights: no 16-bit pair sum saturates
        assert kernels["default_session"]["top1_agreement_with_precise"] == 1.0 and meta["ort_session_config"] == {}


def test_histogram_calibration_sample_count_is_capped(conv_model, tmp_path, monkeypatch):
    fp32, x = conv_model
    pre = tmp_path / "pre.onnx"
    ptq._preprocess(fp32, pre)  # shape inference, as quantize_int8 runs it before sizing the cap
    per_sample = ptq._activation_floats_per_sample(pre)
    assert per_sample >= 8 * 8 * 8  # the conv output alone holds channels x size x size floats
    monkeypatch.setattr(ptq, "_HIST_BUDGET_FLOATS", per_sample * 10)
    meta = quantize_int8(fp32, tmp_path / "e.onnx", x, PTQConfig(calibration="entropy"))
    assert meta["calibration_samples_requested"] == 64 and 1 <= meta["calibration_samples"] < 64
    meta = quantize_int8(fp32, tmp_path / "m.onnx", x, PTQConfig(calibration="minmax"))
    assert meta["calibration_samples"] == 64  # MinMax keeps two scalars per tensor: never capped


def test_calibration_sample_is_deterministic_and_without_replacement():
    from edgedistill.data import ArraySplit

    x = np.arange(100, dtype=np.uint8)[:, None]
    split = ArraySplit(x, np.zeros(100, np.int64), source="x.npy")
    a, b = calibration_sample(split, 30, seed=3), calibration_sample(split, 30, seed=3)
    assert len(a) == 30 and np.array_equal(a.indices, b.indices)  # the same samples, chosen without reading any
    xa = a.read(np.arange(len(a)))
    assert xa.dtype == np.float32 and np.array_equal(xa, b.read(np.arange(len(b))))
    assert len(np.unique(xa)) == 30 and np.array_equal(xa[:, 0], np.sort(xa[:, 0]))  # no repeats, in file order
    np.testing.assert_array_equal(xa[:, 0], a.indices)  # sample i holds the value i
    assert not np.array_equal(calibration_sample(split, 30, seed=4).indices, a.indices)  # the seed decides
    assert len(calibration_sample(split, 500, seed=0)) == 100
    assert len(calibration_sample(x.astype(np.float32), 30, seed=3)) == 30  # a plain array of inputs too
