"""`edgedistill evaluate` and `quantize` on a user's own ONNX classifier, in-process with click's CliRunner:
the accuracy is ONNX Runtime's own, INT8 files are written only on success, bad input is one sentence."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgedistill.cli_onnx import evaluate_cmd, quantize_cmd


def _invoke(cmd, *args):
    return CliRunner().invoke(cmd, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small conv classifier of 1 x 8 x 8 digits (3 classes), trained a little, exported to ONNX, and its data."""
    import torch
    from sklearn.datasets import load_digits

    d = tmp_path_factory.mktemp("own-onnx")
    digits = load_digits(n_class=3)
    x = (digits.images[:, None] / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 64, 3))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    torch.onnx.export(net.eval(), torch.from_numpy(x[:1]), str(d / "m.onnx"), input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "n"}, "output": {0: "n"}}, dynamo=False)
    np.savez(d / "data.npz", x=x, y=y)
    return d, x, y


def _ort_accuracy(path, x, y) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((sess.run(None, {"input": x})[0].argmax(1) == y).mean())


def test_evaluate_is_onnx_runtimes_accuracy_on_every_sample(model):
    d, x, y = model
    res = _invoke(evaluate_cmd, d / "m.onnx", "--data", d / "data.npz", "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["samples"] == len(y) and r["split"] == "all"
    (m,) = r["models"]
    assert m["metric"]["name"] == "accuracy" and m["metric"]["value"] == pytest.approx(_ort_accuracy(d / "m.onnx", x, y))
    assert m["metric"]["value"] > 0.8 and m["size_mb"] > 0
    text = _invoke(evaluate_cmd, d / "m.onnx", "--data", d / "data.npz")
    assert f"accuracy {m['metric']['value']:.4f}" in text.output and f"{len(y):,} labelled samples" in text.output


def test_quantize_writes_int8_and_reports_both_metrics_on_the_test_part(model, tmp_path):
    import onnx

    d, x, y = model
    out = tmp_path / "q" / "m_int8.onnx"
    res = _invoke(quantize_cmd, d / "m.onnx", "--data", d / "data.npz", "--out", out, "--samples", 64, "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert set(r) >= {"fp32", "int8", "drop_points", "kept_fp32", "method"} and r["method"] == "mse"
    assert r["kept_fp32"] == [] and r["calibration_samples"] == 64 and r["splits"]["metric"] == "test"
    assert r["int8"]["path"] == str(out) and out.is_file()
    assert sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node) > 0
    assert r["int8"]["size_mb"] < r["fp32"]["size_mb"]
    assert r["drop_points"] == pytest.approx((r["fp32"]["metric"]["value"] - r["int8"]["metric"]["value"]) * 100, abs=1e-3)
    assert 0.0 <= r["int8"]["metric"]["value"] <= 1.0
    assert not list(out.parent.glob(".*partial*"))


def test_quantize_with_a_reachable_max_drop_runs_the_fallback_on_the_validation_part(model, tmp_path):
    d, _, _ = model
    out = tmp_path / "m_int8.onnx"
    res = _invoke(quantize_cmd, d / "m.onnx", "--data", d / "data.npz", "--out", out, "--max-drop", 100, "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["splits"]["fallback"] == "val" and r["fallback"]["met"] and r["fallback"]["steps"]


def test_quantize_an_unreachable_max_drop_is_one_sentence_and_leaves_no_file(model, tmp_path, monkeypatch):
    from edgedistill.quant import ptq

    d, _, _ = model
    real = ptq.quantize_int8

    def missed(onnx_in, onnx_out, *a, **kw):  # the fallback ran out of quantizers to remove
        meta = real(onnx_in, onnx_out, *a, **kw)
        meta["fallback"].update(met=False, steps=[{"quantizers_removed": ["x"], "nodes_in_fp32": ["/0/Conv"],
                                                   "accuracy": 0.5, "drop_points": 12.5}])
        return meta

    monkeypatch.setattr(ptq, "quantize_int8", missed)
    out = tmp_path / "m_int8.onnx"
    res = CliRunner().invoke(quantize_cmd, [str(d / "m.onnx"), "--data", str(d / "data.npz"), "--out", str(out),
                                            "--max-drop", "1"])
    assert res.exit_code == 1
    assert "loses 12.50 accuracy points on the val split" in res.output and "--max-drop 1" in res.output
    assert "1 activation quantizer(s) removed" in res.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_quantize_with_unlabelled_data_only_calibrates(model, tmp_path):
    d, x, _ = model
    np.savez(tmp_path / "calib.npz", x=x[:50])
    out = tmp_path / "m_int8.onnx"
    res = _invoke(quantize_cmd, d / "m.onnx", "--data", tmp_path / "calib.npz", "--out", out, "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["int8"]["metric"] is None and r["drop_points"] is None and r["calibration_samples"] == 50 and out.is_file()
    assert r["data"].endswith("(no labels: calibration only)")
    res = CliRunner().invoke(quantize_cmd, [str(d / "m.onnx"), "--data", str(tmp_path / "calib.npz"), "--out",
                                            str(tmp_path / "x.onnx"), "--max-drop", "1"])
    assert res.exit_code == 1 and "has no labels" in res.output and not (tmp_path / "x.onnx").exists()


def test_image_folder_data_is_resized_to_the_models_input(model, tmp_path):
    from PIL import Image

    d, x, y = model
    for i in range(12):  # the digits at 16 x 16, grey PNGs in one folder per class
        folder = tmp_path / "imgs" / str(int(y[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[i, 0] * 255).astype(np.uint8)).resize((16, 16)).save(folder / f"{i}.png")
    res = _invoke(evaluate_cmd, d / "m.onnx", "--data", tmp_path / "imgs", "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert "resized to 8x8, L, pixel / 255" in r["data"] and r["samples"] == 12


def test_a_toml_data_table_sets_the_preprocessing(model, tmp_path):
    d, x, y = model
    np.savez(tmp_path / "raw.npz", x=(x * 16).astype(np.float32), y=y)  # stored 0..16: the TOML scales it back
    (tmp_path / "data.toml").write_text('[data]\ndataset = "npz"\npath = "raw.npz"\n'
                                        '[data.preprocess]\nscale = 0.0625\nmean = "none"\nstd = "none"\n')
    res = _invoke(evaluate_cmd, d / "m.onnx", "--data", tmp_path / "data.toml", "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)["models"][0]["metric"]["value"]
    assert r == pytest.approx(_ort_accuracy(d / "m.onnx", x, y))
    (tmp_path / "bad.toml").write_text('[data]\ndataset = "npz"\npaht = "raw.npz"\n')
    res = CliRunner().invoke(evaluate_cmd, [str(d / "m.onnx"), "--data", str(tmp_path / "bad.toml")])
    assert res.exit_code == 1 and "bad.toml: data.paht: unknown key" in res.output


@pytest.mark.parametrize("case, message", [
    ("not-onnx", "not a valid ONNX model"),
    ("shape", "expects input of shape [1, 8, 8]"),
    ("labels", "has label 7, but"),
    ("missing-data", "does not exist"),
])
def test_bad_input_is_one_sentence_exit_1_and_writes_nothing(model, tmp_path, case, message):
    d, x, y = model
    m, data = d / "m.onnx", d / "data.npz"
    if case == "not-onnx":
        m = tmp_path / "m.onnx"
        m.write_text("not a model")
    elif case == "shape":
        data = tmp_path / "flat.npz"
        np.savez(data, x=x.reshape(len(x), -1), y=y)
    elif case == "labels":
        data = tmp_path / "labels.npz"
        np.savez(data, x=x, y=np.where(y == 2, 7, y))
    else:
        data = tmp_path / "nowhere.npz"
    out = tmp_path / "out" / "q.onnx"
    for cmd, args in ((quantize_cmd, ["--out", str(out)]), (evaluate_cmd, [])):
        res = CliRunner().invoke(cmd, [str(m), "--data", str(data), *args])
        assert res.exit_code == 1, res.output
        *progress, line = res.stderr.strip().splitlines()  # quantize says what it starts on stderr first
        assert line.startswith("Error: ") and message in line and len(progress) <= 1 and "Traceback" not in res.output, line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_usage_errors_exit_2(model, tmp_path):
    d, _, _ = model
    assert CliRunner().invoke(quantize_cmd, [str(d / "m.onnx"), "--data", str(d / "data.npz")]).exit_code == 2  # no --out
    assert CliRunner().invoke(evaluate_cmd, [str(d / "m.onnx")]).exit_code == 2  # no --data
    assert CliRunner().invoke(quantize_cmd, [str(d / "m.onnx"), "--data", str(d / "data.npz"), "--out", "q.onnx",
                                             "--method", "median"]).exit_code == 2
