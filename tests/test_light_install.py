"""The light install: ``pip install edgedistill`` pulls no torch and runs ``inspect``, ``bench``, ``evaluate``,
``quantize`` and ``bundle``; what needs the training pipeline says, in one sentence, which pip line installs it.

The fast test hides torch (and the ``train`` extra's other modules) from a subprocess (``tests/_light.py``); the
slow one builds a real virtual environment with the one pip line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_models
from _light import ROOT, light_env

PIPELINE_LINE = re.escape("install the pipeline with `pip install 'edgedistill[train]'`.")

# Runs the commands through edgedistill.cli.main in one process (tests/_cli.py), then lists the hidden modules
# that got imported anyway.
_SCRIPT = textwrap.dedent("""
    import json, sys
    from _cli import edgedistill
    from edgedistill.errors import PIPELINE_MODULES
    out = {name: [(r := edgedistill(*args)).returncode, r.stdout, r.stderr] for name, args in json.loads(sys.argv[1]).items()}
    out["loaded"] = sorted({m.split(".")[0] for m in sys.modules} & PIPELINE_MODULES)
    print(json.dumps(out))
""")


def _data(folder: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A tiny ONNX classifier (input N x 1 x 8 x 8, 5 classes) and an .npz of 60 labelled samples for it."""
    model = onnx_models.conv(folder / "model.onnx")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((60, 1, 8, 8)).astype(np.float32), np.arange(60) % 5
    np.savez(folder / "data.npz", x=x, y=y)
    return Path(model), folder / "data.npz", x, y


def _ort_accuracy(path, x, y) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((sess.run(None, {"x": x})[0].argmax(1) == y).mean())


def _images(folder: Path) -> Path:
    """An image folder (2 classes x 3 PNGs, 10 x 10 grey): read through Pillow, resized to the model's 8 x 8."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (folder / "images" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8), "L").save(folder / "images" / c / f"{i}.png")
    return folder / "images"


def test_runtime_commands_run_and_pipeline_commands_say_how_to_install_it_without_torch(tmp_path):
    model, data, x, y = _data(tmp_path)
    (tmp_path / "torchdata.py").write_text("import torch\n\ndef build(cfg, seed):\n    return None\n")
    (tmp_path / "factory.toml").write_text('[data]\ndataset = "factory"\noptions = { factory = "torchdata:build" }\n')
    (tmp_path / "digits.toml").write_text('[data]\ndataset = "digits"\n')
    int8 = tmp_path / "int8.onnx"
    commands = {
        "evaluate": ["evaluate", model, "--data", data, "--json"],
        "evaluate_images": ["evaluate", model, "--data", _images(tmp_path), "--json"],
        "quantize": ["quantize", model, "--data", data, "--out", int8, "--max-drop", "100", "--json"],
        "bundle": ["bundle", int8, "--out", tmp_path / "bundle", "--json"],
        "inspect": ["inspect", int8, "--json"],
        "bench": ["bench", int8, "--runs", "5", "--min-seconds", "0", "--json"],
        "run": ["run", "--run-dir", tmp_path / "runs" / "x"],
        "losses": ["losses"],
        "factory": ["evaluate", model, "--data", tmp_path / "factory.toml"],
        "digits": ["evaluate", model, "--data", tmp_path / "digits.toml"],
    }
    args = json.dumps({k: [str(a) for a in v] for k, v in commands.items()})
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, args], cwd=tmp_path, env=light_env(tmp_path / "site"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r.pop("loaded") == []
    for name in ("evaluate", "evaluate_images", "quantize", "bundle", "inspect", "bench"):
        assert r[name][0] == 0, (name, r[name][2])
    out = {name: json.loads(r[name][1]) for name in ("evaluate", "evaluate_images", "quantize", "bundle", "inspect", "bench")}

    assert out["evaluate"]["models"][0]["metric"]["value"] == pytest.approx(_ort_accuracy(model, x, y))
    assert out["evaluate"]["samples"] == 60 and out["evaluate_images"]["samples"] == 6
    assert out["quantize"]["int8"]["path"] == str(int8) and out["quantize"]["drop_points"] is not None
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"model.onnx", "model.ort", "required_operators.config", "MODEL_CARD.md"} <= set(out["bundle"]["files"])
    assert (tmp_path / "bundle" / "model.ort").stat().st_size > 0
    assert out["inspect"]["params"] > 0 and out["bench"]["models"][0]["runs"] >= 5

    for name, what, module in (("run", "edgedistill run", "torch"), ("losses", "edgedistill losses", "torch"),
                               ("factory", "data.options.factory: 'torchdata'", "torch"),
                               ("digits", "edgedistill evaluate", "scikit-learn")):
        code, stdout, stderr = r[name]
        assert code == 1 and stdout == "", (name, stderr)
        assert re.fullmatch(f"(.*\\n)?Error: {re.escape(what)} needs {module}, which this install lacks .*{PIPELINE_LINE}\\n",
                            stderr, re.S), (name, stderr)
        assert "Traceback" not in stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def _pip(venv: Path, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *args], capture_output=True, text=True, **kw)


@pytest.mark.slow
def test_one_pip_line_installs_the_runtime_commands_without_torch(tmp_path):
    """`python -m venv`, then the README's light line from a copy of this checkout (not editable): no torch in it,
    and every torch-free command runs there on a small model and .npz."""
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ and *.egg-info there
    shutil.copytree(ROOT / "edgedistill", src / "edgedistill", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    inst = _pip(venv, "install", "-q", str(src), timeout=600)
    assert inst.returncode == 0, inst.stderr[-3000:]

    py, cli = venv / "bin" / "python", venv / "bin" / "edgedistill"
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    probe = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
    assert _pip(venv, "show", "torch", env=env).returncode != 0
    names = {p["name"].lower() for p in json.loads(_pip(venv, "list", "--format", "json", env=env, check=True).stdout)}
    assert not names & {"torch", "onnxscript", "scikit-learn", "matplotlib", "tqdm"}, sorted(names)
    where = subprocess.run([str(py), "-c", "import edgedistill; print(edgedistill.__file__)"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, check=True).stdout
    assert where.startswith(str(venv))  # the installed copy, not this checkout

    model, data, x, y = _data(tmp_path)
    int8 = tmp_path / "int8.onnx"

    def edgedistill(*args) -> dict | str:
        res = subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True, env=env, cwd=tmp_path,
                             timeout=300)
        assert res.returncode == 0, (args, res.stderr)
        return json.loads(res.stdout) if "--json" in args else res.stdout

    assert edgedistill("evaluate", model, "--data", data, "--json")["models"][0]["metric"]["value"] == \
        pytest.approx(_ort_accuracy(model, x, y))
    assert edgedistill("quantize", model, "--data", data, "--out", int8, "--json")["int8"]["path"] == str(int8)
    assert "model.ort" in edgedistill("bundle", int8, "--out", tmp_path / "bundle", "--json")["files"]
    assert edgedistill("inspect", int8, "--json")["params"] > 0
    assert edgedistill("bench", int8, "--runs", "5", "--min-seconds", "0", "--json")["models"][0]["runs"] >= 5
    res = subprocess.run([str(cli), "run", "--run-dir", str(tmp_path / "runs")], capture_output=True, text=True,
                         env=env, cwd=tmp_path)
    assert res.returncode == 1 and re.search(PIPELINE_LINE, res.stderr) and not (tmp_path / "runs").exists()
    assert os.path.getsize(tmp_path / "bundle" / "model.ort") > 0
