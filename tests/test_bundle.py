import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_models
from edgedistill.bundle import write_bundle
from edgedistill.errors import ConfigError, DataError

MACHINE = {"cpu": "Test CPU", "cores": 2, "isa": {"avx2": True, "avx512_vnni": False}, "onnxruntime": ort.__version__}
CARD = {"metric": {"name": "accuracy", "value": 0.9731}, "latency_ms": {"p50": 0.11, "p90": 0.13},
        "peak_rss_mb": 71.5, "threads": 1, "machine": MACHINE, "teacher": "resnet-teacher (runs/demo/01_teacher)"}


@pytest.fixture(scope="module")
def conv_bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("bundle")
    src = onnx_models.conv(d / "student.onnx")
    meta = {"name": "digits-student", "labels": list("01234"), "task": "image-classification",
            "preprocessing": {"input_size": [8, 8], "mean": [0.5], "std": [0.25], "layout": "NCHW"}}
    result = write_bundle(src, d / "bundle", metadata=meta, model_card=CARD)
    return d / "bundle", result


def _sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def test_bundle_holds_every_file_with_hashes(conv_bundle):
    out, result = conv_bundle
    names = {p.name for p in out.iterdir()}
    assert names == {"model.onnx", "model.ort", "required_operators.config", "metadata.json", "MODEL_CARD.md"}
    meta = json.loads((out / "metadata.json").read_text())
    assert set(meta["files"]) == names - {"metadata.json"}
    for name, f in meta["files"].items():
        assert f["sha256"] == _sha(out / name) == result["files"][name]
        assert f["bytes"] == (out / name).stat().st_size
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temp folder left behind


def test_metadata_json_facts(conv_bundle):
    out, _ = conv_bundle
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["inputs"] == [{"name": "x", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]
    assert meta["outputs"] == [{"name": "logits", "shape": ["batch", 5], "dtype": "float32"}]
    assert meta["labels"] == list("01234")
    assert meta["preprocessing"]["mean"] == [0.5] and meta["preprocessing"]["layout"] == "NCHW"
    assert meta["opset"] == {"ai.onnx": 17}
    assert meta["onnxruntime"] == ort.__version__
    assert meta["precision"] == "fp32"
    for ep in ("nnapi", "coreml_neuralnetwork", "coreml_mlprogram"):
        u = meta["usability"][ep]
        assert u["suitability"] in {"YES", "MAYBE", "NO"} and 0 <= u["supported_nodes"] <= u["nodes"]
    assert meta["warnings"] == []


def test_onnx_metadata_props_carry_the_key_facts(conv_bundle):
    out, _ = conv_bundle
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert props["edgedistill.name"] == "digits-student"
    assert json.loads(props["edgedistill.labels"]) == list("01234")
    assert json.loads(props["edgedistill.preprocessing"])["input_size"] == [8, 8]
    assert props["edgedistill.onnxruntime"] == ort.__version__
    assert json.loads(props["edgedistill.inputs"])[0]["name"] == "x"


def test_ort_file_reproduces_onnx_outputs(conv_bundle):
    out, result = conv_bundle
    x = np.random.default_rng(7).standard_normal((3, 1, 8, 8)).astype(np.float32)
    a = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    b = ort.InferenceSession(str(out / "model.ort"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert (out / "model.ort").read_bytes()[4:8] == b"ORTM"  # flatbuffer file identifier of the ORT format
    assert result["ort_parity"]["ok"] is True


def test_required_operators_config_lists_the_ops(conv_bundle):
    out, _ = conv_bundle
    text = (out / "required_operators.config").read_text()
    assert "Gemm" in text and "GlobalAveragePool" in text
    assert "/tmp" not in text and ".ort_conversion" not in text


def test_model_card_says_what_and_where(conv_bundle):
    out, _ = conv_bundle
    card = (out / "MODEL_CARD.md").read_text()
    assert card.startswith("# digits-student\n")
    assert "| accuracy | 0.9731 |" in card
    assert "| latency p90 | 0.13 ms |" in card
    assert "Test CPU, 2 cores, ISA: avx2" in card
    assert "resnet-teacher" in card
    assert "| parameters | 65 |" in card


def test_qdq_model_aimed_at_coreml_warns(tmp_path):
    src = onnx_models.qdq_matmul(tmp_path / "q.onnx")
    r = write_bundle(src, tmp_path / "ios", metadata={"execution_provider": "CoreMLExecutionProvider"}, model_card={})
    assert len(r["warnings"]) == 1 and "QuantizeLinear/DequantizeLinear" in r["warnings"][0]
    assert "QuantizeLinear/DequantizeLinear" in (tmp_path / "ios" / "MODEL_CARD.md").read_text()
    assert "ai.onnx:QuantizeLinear" in r["usability"]["coreml_mlprogram"]["unsupported_ops"]
    r_cpu = write_bundle(src, tmp_path / "android", metadata={}, model_card={})
    assert r_cpu["warnings"] == []
    assert "warning" in r_cpu["usability"]["coreml_mlprogram"]  # the CoreML rows still say it
    meta = json.loads((tmp_path / "android" / "metadata.json").read_text())
    assert meta["precision"] == "int8"


def test_text_model_bundles_tokenizer_files(tmp_path):
    src = onnx_models.token_model(tmp_path / "tok.onnx")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\nhello\n")
    tok = tmp_path / "tokenizer_config.json"
    tok.write_text('{"do_lower_case": true}')
    r = write_bundle(src, tmp_path / "b", metadata={"task": "sentence-embedding",
                                                    "preprocessing": {"max_length": 32}},
                     model_card={}, extra_files=[str(vocab), str(tok)])
    out = tmp_path / "b"
    assert (out / "vocab.txt").read_text() == vocab.read_text()
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["extra_files"] == ["vocab.txt", "tokenizer_config.json"]
    assert meta["files"]["vocab.txt"]["sha256"] == _sha(vocab)
    assert [i["dtype"] for i in meta["inputs"]] == ["int64", "int64"]
    ids = np.array([[2, 5, 7]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    a = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    b = ort.InferenceSession(str(out / "model.ort"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert r["ort_parity"]["ok"]


def test_rewrite_replaces_the_old_bundle(tmp_path):
    src = onnx_models.mlp(tmp_path / "m.onnx")
    extra = tmp_path / "labels.txt"
    extra.write_text("a\nb\nc\n")
    write_bundle(src, tmp_path / "b", metadata={}, model_card={}, extra_files=[str(extra)])
    assert (tmp_path / "b" / "labels.txt").exists()
    write_bundle(src, tmp_path / "b", metadata={}, model_card={})
    assert not (tmp_path / "b" / "labels.txt").exists()


def test_bad_arguments_are_our_errors(tmp_path):
    src = onnx_models.mlp(tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match=r"metadata\.colour: unknown key; valid keys are: name, "):
        write_bundle(src, tmp_path / "b", metadata={"colour": "red"}, model_card={})
    with pytest.raises(ConfigError, match=r"model_card\.acc: unknown key"):
        write_bundle(src, tmp_path / "b", metadata={}, model_card={"acc": 1})
    with pytest.raises(DataError, match=r"nope\.onnx: model file not found"):
        write_bundle(tmp_path / "nope.onnx", tmp_path / "b", metadata={}, model_card={})
    with pytest.raises(DataError, match=r"vocab\.txt: extra file for the bundle not found"):
        write_bundle(src, tmp_path / "b", metadata={}, model_card={}, extra_files=[str(tmp_path / "vocab.txt")])
    clash = tmp_path / "model.ort"
    clash.write_text("x")
    with pytest.raises(DataError, match=r"extra_files: \['model.ort'\] would collide"):
        write_bundle(src, tmp_path / "b", metadata={}, model_card={}, extra_files=[str(clash)])
    assert not (tmp_path / "b").exists()


def test_bundle_cli_with_target_labels_and_preprocessing(tmp_path):
    from click.testing import CliRunner

    from edgedistill.cli_runtime import bundle_cmd

    src = onnx_models.qdq_matmul(tmp_path / "q.onnx")
    (tmp_path / "labels.txt").write_text("cat\ndog\n\nbird\nfish\n")
    (tmp_path / "prep.json").write_text('{"mean": 0.1}')
    res = CliRunner().invoke(bundle_cmd, [str(src), "--out", str(tmp_path / "b"), "--target", "iphone",
                                          "--labels", str(tmp_path / "labels.txt"),
                                          "--preprocessing", str(tmp_path / "prep.json"), "--json"])
    assert res.exit_code == 0, res.output
    assert "warning: the model is QDQ-quantized" in res.stderr
    meta = json.loads((tmp_path / "b" / "metadata.json").read_text())
    assert meta["labels"] == ["cat", "dog", "bird", "fish"] and meta["preprocessing"] == {"mean": 0.1}
    assert meta["target"] == "iphone" and meta["execution_provider"] == "CoreMLExecutionProvider"
    assert json.loads(res.stdout)["files"]["model.ort"] == meta["files"]["model.ort"]["sha256"]
    (tmp_path / "bad.json").write_text("{nope")
    res = CliRunner().invoke(bundle_cmd, [str(src), "--out", str(tmp_path / "c"), "--preprocessing",
                                          str(tmp_path / "bad.json")])
    assert res.exit_code == 1 and "bad.json: not valid JSON" in res.output
