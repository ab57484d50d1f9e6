"""LiteRT beside ONNX Runtime: .tflite export (FP32 checked against PyTorch, INT8 by PT2E), the session that verify
and bench run it through (int8 I/O converted inside each call), and a pipeline whose target asks for LiteRT."""

import json
import sys

import numpy as np
import pytest
import torch

from edgedistill.errors import DataError, EdgeDistillError
from edgedistill.export import export_tflite
from edgedistill.litert import LiteRTSession, check_tflite, tflite_facts
from tests._cli import edgedistill


def _tiny_cnn():
    from edgedistill.models import build_model

    torch.manual_seed(0)
    return build_model("cnn", {"width": 8, "depth": 2}, (1, 8, 8), 10, "student").eval()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(model, inputs, fp32 record, int8 record): one tiny CNN converted both ways, shared by the module."""
    d = tmp_path_factory.mktemp("litert")
    model = _tiny_cnn()
    x = np.random.default_rng(0).standard_normal((48, 1, 8, 8)).astype(np.float32)
    fp32 = export_tflite(model, d / "fp32.tflite", x, parity=(1e-4, 1e-3))
    int8 = export_tflite(model, d / "int8.tflite", x, calibration=x[:32])
    return model, x, fp32, int8


def test_fp32_matches_pytorch_and_int8_has_int8_io(converted):
    model, x, fp32, int8 = converted
    assert fp32["parity"]["ok"] and fp32["parity"]["max_abs_diff"] < 1e-4 and fp32["parity"]["top1_agreement"] == 1.0
    assert int8["agreement"]["top1_agreement"] >= 0.9 and int8["size_mb"] < fp32["size_mb"]
    facts = tflite_facts(int8["path"])
    assert facts["format"] == "int8" and facts["signature"] == "serving_default"
    (inp,), (out,) = facts["inputs"], facts["outputs"]
    assert inp["dtype"] == "int8" and out["dtype"] == "int8" and inp["shape"] == [1, 1, 8, 8]
    assert inp["quantization"]["scale"] > 0 and -128 <= inp["quantization"]["zero_point"] <= 127
    assert tflite_facts(fp32["path"])["format"] == "float"


def test_session_quantizes_inputs_and_dequantizes_outputs_as_an_app_does(converted):
    """run() = the app's code: q = clamp(round(x / s) + z); invoke; y = s_out * (q_out - z_out), checked by hand."""
    _, x, _, int8 = converted
    sess = LiteRTSession(int8["path"], threads=1)
    it, (d_in,), (d_out,) = sess.interpreter, sess.interpreter.get_input_details(), sess.interpreter.get_output_details()
    s, z = d_in["quantization"]
    q = np.clip(np.round(x[:1] / s) + z, -128, 127).astype(np.int8)
    it.set_tensor(d_in["index"], q)
    it.invoke()
    so, zo = d_out["quantization"]
    by_hand = (it.get_tensor(d_out["index"]).astype(np.float32) - zo) * so
    np.testing.assert_allclose(sess.run(None, {"input": x[:1]})[0], by_hand, rtol=0, atol=1e-6)
    assert sess.int8_io and [a.type for a in sess.get_inputs()] == ["tensor(float)"]
    # a batch larger than the converted one runs row by row: the same rows as one at a time
    batch = sess.run(None, {"input": x[:5]})[0]
    rows = np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(5)])
    np.testing.assert_array_equal(batch, rows)


def test_bench_measures_tflite_with_onnx_beside_it(converted, tmp_path):
    from edgedistill.bench import benchmark
    from edgedistill.export import export_onnx
    from edgedistill.recipe import ExportConfig

    model, x, fp32, int8 = converted
    onnx_path = tmp_path / "m.onnx"
    export_onnx(model, onnx_path, x[:8], ExportConfig())
    r = benchmark([str(onnx_path), fp32["path"], int8["path"]], runs=20, warmup=2, min_seconds=0.0, ci_tolerance=None)
    by = {m["path"]: m for m in r["models"]}
    assert by[fp32["path"]]["execution_provider"] == "LiteRT (XNNPACK)"
    assert by[str(onnx_path)]["execution_provider"] == "CPUExecutionProvider"
    assert by[int8["path"]]["int8_io_ms"] > 0 and by[fp32["path"]]["int8_io_ms"] is None
    for m in r["models"]:
        assert m["runs"] >= 20 and m["latency_ms"]["p50"] > 0 and m["peak_rss_mb"] > 0 and m["session_create_ms"] > 0


def test_a_file_that_is_not_tflite_is_one_sentence(tmp_path):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(DataError, match=r"model\.tflite: not a TFLite model .*re-export it\.$"):
        check_tflite(bad)
    with pytest.raises(DataError, match="not found"):
        check_tflite(tmp_path / "missing.tflite")


def test_without_the_runtime_the_error_names_the_extra(converted, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(EdgeDistillError, match=r"needs the LiteRT runtime; pip install 'edgedistill\[litert\]'"):
        LiteRTSession(converted[2]["path"])


def test_qat_float_twin_keeps_the_int8_weight_grid():
    """The QAT model's float twin holds weights a symmetric per-channel max|w|/127 scale recovers exactly."""
    from edgedistill.quant.qat import QuantConv2d, convert_qat, float_twin, prepare_qat

    qat = prepare_qat(_tiny_cnn())
    qat(torch.randn(4, 1, 8, 8))  # observe once
    twin = float_twin(convert_qat(qat))
    convs = [m for m in twin.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and not any(isinstance(m, QuantConv2d) for m in twin.modules())
    for conv in convs:
        w = conv.weight.detach()
        scale = w.abs().flatten(1).amax(1).clamp(min=1e-12) / 127
        q = w / scale.view(-1, 1, 1, 1)
        np.testing.assert_allclose(q.numpy(), np.round(q.numpy()), atol=1e-4)


def _litert_recipe(tmp_path, runtime: str) -> str:
    from tests.conftest import TINY_RECIPE

    target = tmp_path / "phone.toml"
    target.write_text(f'name = "phone-litert"\narchitecture = "x86_64"\ncores = 2\nthreads = 1\nruntime = "{runtime}"\n'
                      "[budgets]\nsize_mb = 20.0\n")
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE.replace('target = "laptop-x86"', f'target = "{target}"'))
    return recipe


@pytest.fixture(scope="module")
def both_run(tmp_path_factory):
    """A tiny run whose target asks for both runtimes, finished once; read-only (copy it to change it)."""
    d = tmp_path_factory.mktemp("both")
    proc = edgedistill("run", _litert_recipe(d, "both"), "--run-dir", d / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d


def test_pipeline_with_both_runtimes_reports_them_side_by_side_and_bundles_both(both_run):
    out = both_run / "out"
    report = json.loads((out / "report" / "report.json").read_text())
    runtimes = {m["name"]: m["runtime"] for m in report["models"]}
    assert {n for n, r in runtimes.items() if r == "litert"} == {"student_fp32_litert", "student_int8_litert",
                                                                 "student_qat_int8_litert"}
    assert runtimes["student_int8"] == "onnxruntime" and report["target"]["runtime"] == "both"
    for m in report["models"]:  # every .tflite verified through LiteRT and benchmarked like the ONNX files
        assert 0.0 <= m["metric"]["value"] <= 1.0 and m["latency_ms"]["p90"] > 0
    by_rt = report["deliverable_by_runtime"]
    assert runtimes[by_rt["litert"]] == "litert" and runtimes[by_rt["onnxruntime"]] == "onnxruntime"
    assert report["deliverable"] in by_rt.values()
    meta = json.loads((out / "06b_litert" / "meta.json").read_text())
    assert meta["student_fp32_litert"]["parity"]["ok"]
    # the QAT student's activation ranges carried over: its input quantizer is the QAT's, to the bit
    assert meta["student_qat_int8_litert"]["activation_ranges_carried"]["from_qat"] >= 2
    import onnx
    from onnx import numpy_helper

    qat_onnx = {i.name: numpy_helper.to_array(i) for i in onnx.load(out / "04_qat" / "student_qat_int8.onnx").graph.initializer}
    tfl_in = tflite_facts(out / "06b_litert" / "student_qat_int8.tflite")["inputs"][0]["quantization"]
    assert np.float32(tfl_in["scale"]) == np.float32(qat_onnx["input_quant.scale"])
    bundle = out / "bundle"
    files = {p.name for p in bundle.iterdir()}
    assert {"model.onnx", "model.ort", "model.tflite", "metadata.json", "MODEL_CARD.md"} <= files
    bmeta = json.loads((bundle / "metadata.json").read_text())
    assert bmeta["runtime"] == runtimes[report["deliverable"]]
    assert bmeta["litert"]["input_layout"] == "NCHW" and bmeta["litert"]["file"] == "model.tflite"
    assert "model.tflite" in bmeta["files"] and "LiteRT" in (out / "report" / "report.md").read_text()


def test_pipeline_with_litert_only_delivers_a_tflite_file(both_run, tmp_path):
    """The same run with the target's runtime changed to "litert": the stages that read the target re-run (the
    conversions among them), the trained ones are skipped, and the deliverable and the bundle are LiteRT's alone."""
    import shutil

    shutil.copytree(both_run / "out", tmp_path / "out")
    proc = edgedistill("run", _litert_recipe(tmp_path, "litert"), "--run-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[distill] unchanged, skipped" in proc.stderr and "[litert] running" in proc.stderr
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    best = next(m for m in report["models"] if m["name"] == report["deliverable"])
    assert best["runtime"] == "litert" and best["path"].endswith(".tflite")
    assert "deliverable_by_runtime" not in report
    bundle = tmp_path / "out" / "bundle"
    assert {p.name for p in bundle.iterdir()} == {"model.tflite", "metadata.json", "MODEL_CARD.md"}
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "model.tflite (LiteRT)" in card and "Inputs and outputs (model.tflite)" in card


def test_a_litert_target_is_checked_before_any_training(monkeypatch):
    """A text task, or no converter installed: one sentence naming the target's runtime key, from the preflight."""
    import importlib.util

    from edgedistill.errors import ConfigError
    from edgedistill.preflight import check_runtime
    from edgedistill.targets import Target
    from edgedistill.tasks import get_task

    phone = Target(name="phone", runtime="both")
    check_runtime(get_task("classification"), phone)  # converts: no error
    check_runtime(get_task("embedding"), Target(name="laptop"))  # ONNX Runtime only: nothing to check
    with pytest.raises(ConfigError, match=r"^runtime: the target phone asks for LiteRT, which the embedding task"):
        check_runtime(get_task("embedding"), phone)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "litert_torch" else real(name, *a))
    with pytest.raises(ConfigError, match=r"converter is not installed; pip install 'edgedistill\[litert\]'"):
        check_runtime(get_task("classification"), phone)
