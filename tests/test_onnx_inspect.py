import json
import subprocess
import sys
from pathlib import Path

import pytest

import onnx_models
from edgedistill.errors import DataError
from edgedistill.onnx_inspect import inspect_model

EXPECTED = json.loads((Path(__file__).parent / "fixtures" / "modelinfo_expected.json").read_text())
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["mlp", "conv", "qdq_matmul", "token_model"])
def test_inspect_matches_hand_counts(tmp_path, name):
    path = getattr(onnx_models, name)(tmp_path / f"{name}.onnx")
    info = inspect_model(str(path))
    for key, want in EXPECTED[name].items():
        if not key.startswith("_"):
            assert info[key] == want, key
    assert info["size_mb"] == pytest.approx(Path(path).stat().st_size / 1e6, abs=1e-6)
    assert info["opset"] == {"ai.onnx": 17}


def test_histogram_is_sorted_by_count(tmp_path):
    info = inspect_model(str(onnx_models.qdq_matmul(tmp_path / "q.onnx")))
    assert list(info["op_histogram"])[0] == "DequantizeLinear"


def test_ort_static_qdq_model_counts_as_quantized(tmp_path):
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    src = onnx_models.conv(tmp_path / "conv.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": np.random.default_rng(i).standard_normal((1, 1, 8, 8)).astype(np.float32)}
                            for i in range(4)])

        def get_next(self):
            return next(self.it, None)

    dst = tmp_path / "conv_int8.onnx"
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    fp, q = inspect_model(str(src)), inspect_model(str(dst))
    assert q["format"] == "QDQ" and fp["format"] == "float"
    assert q["macs"] == fp["macs"] == EXPECTED["conv"]["macs"]
    assert q["quantized_ops"] >= 1 and q["op_histogram"]["QuantizeLinear"] >= 1
    assert q["quantized_mac_share"] >= 2304 / 2324 - 1e-4  # the conv carries almost all MACs


def test_missing_and_junk_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing\.onnx: model file not found; check the path\."):
        inspect_model(str(tmp_path / "missing.onnx"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xffnot onnx at all")
    with pytest.raises(DataError, match=r"junk\.onnx: not a valid ONNX model \(.*\); pass an \.onnx file"):
        inspect_model(str(junk))


def test_import_leaves_torch_unloaded():
    code = "import sys, edgedistill.onnx_inspect; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.strip() == "False"


def test_inspect_cli(tmp_path):
    from click.testing import CliRunner

    from edgedistill.cli_runtime import inspect_cmd

    path = str(onnx_models.conv(tmp_path / "c.onnx"))
    res = CliRunner().invoke(inspect_cmd, [path, "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["macs"] == EXPECTED["conv"]["macs"]
    res = CliRunner().invoke(inspect_cmd, [path])
    assert "65 parameters, 2,324 MACs per sample" in res.stdout and "Conv x1" in res.stdout
    res = CliRunner().invoke(inspect_cmd, [str(tmp_path / "x.onnx")])
    assert res.exit_code == 1 and "x.onnx: model file not found" in res.output
