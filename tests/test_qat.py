"""QAT: fake-quant numerics against ORT's QuantizeLinear/DequantizeLinear, BN folding, INT8 export."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.quant_utils import compute_scale_zp

from edgedistill._schema import from_dict
from edgedistill.errors import ConfigError, StageError
from edgedistill.models import build_model
from edgedistill.quant._fakequant import ActFakeQuant, act_qparams, fake_quant_weight, weight_scales
from edgedistill.quant._fold import fold_bn_
from edgedistill.quant.qat import QATConfig, convert_qat, export_qat_onnx, prepare_qat
from edgedistill.verify import model_session


def _ort_qdq(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int = 1) -> np.ndarray:
    """Run ORT's own QuantizeLinear -> DequantizeLinear on ``x``."""
    inits = [numpy_helper.from_array(scale.astype(np.float32), "s"), numpy_helper.from_array(zp, "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=axis),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=axis)]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("dtype,zp", [("int8", -3), ("int8", -128), ("uint8", 0), ("uint8", 200)])
def test_per_tensor_rounding_saturation_and_zero_point_match_ort(dtype, zp):
    scale = 0.5  # a power of two: x / scale and x * (1 / scale) are both exact
    halves = np.arange(-300.5, 300.5, 1.0, dtype=np.float32) * scale  # every .5 case: half to even
    x = np.concatenate([halves, np.float32([1e6, -1e6, 0.0, 0.25, -0.25, 63.75])]).astype(np.float32)
    npz = np.array(zp, dtype=np.int8 if dtype == "int8" else np.uint8)
    fq = ActFakeQuant(dtype)
    fq.scale.fill_(scale)
    fq.zero_point.fill_(zp)
    ours = fq.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(ours, _ort_qdq(x, np.float32(scale), npz))
    lo, hi = fq.quant_min, fq.quant_max
    assert ours.max() == (hi - zp) * scale and ours.min() == (lo - zp) * scale  # saturation on both ends


def test_per_tensor_random_scales_match_ort_to_one_step():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(0, 3, 4096).astype(np.float32)
        scale, zp = act_qparams(torch.tensor(float(x.min())), torch.tensor(float(x.max())))
        ours = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), scale, zp, -128, 127).numpy()
        theirs = _ort_qdq(x, scale.numpy(), zp.numpy().astype(np.int8))
        diff = np.abs(ours - theirs)
        # torch multiplies by 1/scale, ORT divides: they may differ by one step exactly at a .5 boundary
        assert diff.max() <= scale.item() * 1.0001 and (diff > 0).mean() < 1e-3


def test_per_channel_weights_match_ort():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32)
    w[3] *= 50.0
    scale = weight_scales(torch.from_numpy(w))
    ours = fake_quant_weight(torch.from_numpy(w), scale, torch.zeros(8, dtype=torch.int32)).numpy()
    theirs = _ort_qdq(w, scale.numpy(), np.zeros(8, np.int8), axis=0)
    diff = np.abs(ours - theirs)
    assert (diff <= scale.numpy().reshape(-1, 1, 1, 1) * 1.0001).all() and (diff > 0).mean() < 1e-3
    # each channel's largest weight lands exactly on +-127 steps
    np.testing.assert_allclose(np.abs(ours).reshape(8, -1).max(1), 127 * scale.numpy(), rtol=1e-6)


@pytest.mark.parametrize("lo,hi", [(-1.3, 4.2), (0.0, 6.0), (0.5, 3.0), (-2.0, -0.5), (0.0, 0.0), (-1e-3, 1e5)])
def test_activation_qparams_match_ort_compute_scale_zp(lo, hi):
    zp_ort, scale_ort = compute_scale_zp(np.float32(min(lo, 0.0)), np.float32(max(hi, 0.0)), np.int8(-128), np.int8(127))
    scale, zp = act_qparams(torch.tensor(lo), torch.tensor(hi))
    assert zp.item() == int(zp_ort)
    assert scale.item() == pytest.approx(float(scale_ort), rel=1e-6)


def test_weight_scales_match_ort_symmetric():
    w = torch.randn(6, 4) * torch.arange(1, 7).reshape(-1, 1)
    for c in range(6):
        _, s = compute_scale_zp(w[c].min().numpy(), w[c].max().numpy(), np.int8(-127), np.int8(127), symmetric=True)
        assert weight_scales(w)[c].item() == pytest.approx(float(s), rel=1e-6)


def _model_with_bn_stats(seed: int = 0):
    torch.manual_seed(seed)
    m = build_model("cnn", {"width": 8, "depth": 2}, (1, 12, 12), 5, "student").eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.3, 3.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m


def test_bn_folding_preserves_outputs():
    m = _model_with_bn_stats()
    x = torch.randn(16, 1, 12, 12)
    with torch.no_grad():
        ref = m(x)
        assert fold_bn_(m) == 2
        out = m(x)
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_prepare_qat_refuses_unfoldable_batchnorm():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x)).mean((2, 3))

    with pytest.raises(StageError, match="'bn' does not follow a Conv2d in an nn.Sequential"):
        prepare_qat(Odd())


def test_convert_refuses_uncalibrated_model():
    with pytest.raises(StageError, match="never saw data"):
        convert_qat(prepare_qat(_model_with_bn_stats()))


def test_qat_config_rejects_unknown_keys_and_bad_values():
    assert from_dict(QATConfig, {"enabled": True, "epochs": 2}).epochs == 2
    with pytest.raises(ConfigError, match="qat.epoch: unknown key"):
        from_dict(QATConfig, {"epoch": 2}, "qat")
    with pytest.raises(ConfigError, match="qat.teacher: 'big' is not valid"):
        from_dict(QATConfig, {"teacher": "big"}, "qat")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A converted QAT cnn exported to ONNX, plus the FP32 export of the same network."""
    tmp = tmp_path_factory.mktemp("qat")
    m = _model_with_bn_stats(1)
    q = prepare_qat(m)
    x = torch.randn(256, 1, 12, 12)
    with torch.no_grad():
        for i in range(0, 256, 64):
            q(x[i:i + 64])
    c = convert_qat(q)
    meta = export_qat_onnx(c, tmp / "qat.onnx", x[:2])
    torch.onnx.export(m, (x[:2],), str(tmp / "fp32.onnx"), dynamo=True, external_data=False,
                      dynamic_shapes=({0: "batch"},))
    return c, meta, tmp, x


def test_exported_qat_model_stores_int8_weights(exported):
    _, meta, tmp, _ = exported
    model = onnx.load(tmp / "qat.onnx")
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm"):
            dq = producer[n.input[1]]
            assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].data_type == TensorProto.INT8
            assert inits[producer[n.input[2]].input[0]].data_type == TensorProto.INT32  # bias
    assert meta["int8_weights"] == 3 and meta["int32_biases"] == 3
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["output"]
    assert meta["initializer_elements"]["int8"] > 10 * meta["initializer_elements"].get("float", 0)


def test_ort_fuses_the_qat_graph_into_quantized_kernels(exported, tmp_path):
    _, _, tmp, _ = exported
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(tmp / "qat.onnx"), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node]
    assert ops.count("QLinearConv") == 2 and "Conv" not in ops and "QGemm" in ops


def _assert_ort_matches_torch(path, converted, x, agreement: float) -> None:
    """The INT8 ONNX file's outputs against the converted fake-quant model's, on ``x``: the QDQ graph's own arithmetic
    (ORT's optimizations off) and the fused INT8 kernels in edgedistill's session (exact on every CPU:
    edgedistill.ort_session.PRECISE_INT8)."""
    for graph_arithmetic in (True, False):
        sess = model_session(path, graph_arithmetic=graph_arithmetic)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            ref = converted(x).numpy()
        assert (got.argmax(1) == ref.argmax(1)).mean() >= agreement
        assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_ort_int8_agrees_with_torch_fake_quant(exported):
    c, _, tmp, x = exported
    _assert_ort_matches_torch(tmp / "qat.onnx", c, x, 0.995)


@pytest.mark.slow
def test_run_qat_trains_with_kd_exports_int8_and_checks_parity(tmp_path):
    from edgedistill.data import load_data
    from edgedistill.distill.train import evaluate_accuracy
    from edgedistill.quant.qat_train import run_qat
    from edgedistill.recipe import DataConfig

    splits = load_data(DataConfig(dataset="digits"), seed=0)
    torch.manual_seed(0)
    student = build_model("cnn", {"width": 8, "depth": 2}, splits.input_shape, splits.num_classes, "student")
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    x = torch.from_numpy(splits.train.read(np.arange(len(splits.train))))  # digits: small, read whole for this loop
    y = torch.from_numpy(splits.train.y).long()
    for _ in range(60):  # a quick FP32 student to start from
        for i in range(0, len(x), 128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(student(x[i:i + 128]), y[i:i + 128]).backward()
            opt.step()
    fp32_acc = evaluate_accuracy(student, splits.test)
    assert fp32_acc > 0.85
    cfg = QATConfig(enabled=True, epochs=2, freeze_observers_epoch=1, calibration_batches=4)
    meta = run_qat(student, None, splits, cfg, tmp_path, batch_size=64)
    assert (tmp_path / "student_qat_int8.onnx").exists() and (tmp_path / "meta.json").exists()
    assert meta["parity"]["top1_agreement"] >= 0.995
    assert [r["phase"] for r in meta["history"]] == ["observe", "frozen"]
    assert meta["test_accuracy_fakequant_torch"] >= fp32_acc - 0.03
    assert meta["export"]["int8_weights"] == 3
    with pytest.raises(StageError, match="qat.teacher is 'teacher' but no teacher"):
        run_qat(student, None, splits, QATConfig(teacher="teacher"), tmp_path / "b")


def test_mlp_student_exports_int8_gemms_that_agree_with_torch(tmp_path):
    torch.manual_seed(0)
    m = build_model("mlp", {"hidden": [32, 16]}, (1, 8, 8), 10, "student")
    q = prepare_qat(m)
    x = torch.randn(128, 1, 8, 8)
    with torch.no_grad():
        q(x)
    c = convert_qat(q)
    meta = export_qat_onnx(c, tmp_path / "qat.onnx", x[:2])
    assert meta["int8_weights"] == 3 and meta["int32_biases"] == 3
    _assert_ort_matches_torch(tmp_path / "qat.onnx", c, x, 0.99)
