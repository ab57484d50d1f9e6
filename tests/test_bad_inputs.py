"""The bad-input battery (issue 9): every case is one sentence naming the file or key and what to do,
exit code 1 (2 for CLI misuse), no traceback, and nothing half-written in the run folder.

CLI cases call the entry point users hit, ``edgedistill.cli.main()``, in this process through click's
CliRunner (tests/_cli.py), except those in SUBPROCESS, where a separate ``python -m edgedistill`` is the
point: the malicious pickle (were it ever unpickled, it would run in a process of its own) and the lock
(held by this process, refused in another).
Data, ONNX and disk-full cases call the library (the CLI turns every EdgeDistillError into the same
one sentence and exit 1, which the CLI cases pin).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from edgedistill import _io
from edgedistill.errors import ConfigError, DataError, EdgeDistillError
from tests._cli import edgedistill
from tests._reliab import assert_nothing_half_written, cli
from tests.conftest import TINY_RECIPE


class _Payload:
    """A pickle that runs ``touch MARKER`` when unpickled, as a malicious checkpoint would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _recipe(*sections: str, teacher: str = "") -> str:
    """The tiny recipe with lines appended to its sections (``"[distill]\\nalpha = 2"``) or at the top."""
    text = TINY_RECIPE
    for extra in sections:
        if extra.startswith("["):
            head, _, body = extra.partition("\n")
            start = text.index(head + "\n") + len(head) + 1
            end = text.find("\n[", start) + 1 or len(text)
            keys = {line.split("=")[0].strip() for line in body.splitlines() if "=" in line}
            kept = [line for line in text[start:end].splitlines(keepends=True)
                    if line.split("=")[0].strip() not in keys]  # a key given again replaces the tiny recipe's
            text = text[:start] + body + "\n" + "".join(kept) + text[end:]
        else:
            text = extra + "\n" + text
    if teacher:
        text = text.replace("[teacher]\n", f"[teacher]\n{teacher}\n", 1)
    return text


def _ckpt_wrong_arch(d: Path) -> None:
    torch.save(torch.nn.Linear(64, 10).state_dict(), d / "teacher.pt")


def _ckpt_wrong_width(d: Path) -> None:
    from edgedistill.models import build_model

    torch.save(build_model("cnn", {"width": 16, "depth": 1}, (1, 8, 8), 10, "t").state_dict(), d / "teacher.pt")


def _ckpt_truncated(d: Path) -> None:
    from edgedistill.models import build_model

    torch.save(build_model("cnn", {"width": 8, "depth": 1}, (1, 8, 8), 10, "t").state_dict(), d / "full.pt")
    raw = (d / "full.pt").read_bytes()
    (d / "teacher.pt").write_bytes(raw[: len(raw) // 2])


def _ckpt_malicious(d: Path) -> None:
    (d / "teacher.pt").write_bytes(pickle.dumps({"state_dict": _Payload(d / "PWNED")}))


def _ckpt_whole_module_wrong_width(d: Path) -> None:
    from edgedistill.models import build_model

    torch.save(build_model("cnn", {"width": 16, "depth": 1}, (1, 8, 8), 10, "t"), d / "teacher.pt")


def _ckpt_list(d: Path) -> None:
    torch.save([torch.zeros(3)], d / "teacher.pt")


def _text(name: str, content: str | bytes):
    """A file ``name`` in the case's folder; "{d}" in text content becomes that folder."""
    def make(d: Path) -> None:
        (d / name).write_bytes(content if isinstance(content, bytes) else content.replace("{d}", str(d)).encode())
    return make


def _onnx(name: str, defect: str):
    """An ONNX file in the case's folder: one of _onnx_files's defective 8x8 CNNs."""
    def make(d: Path) -> None:
        shutil.copyfile(_onnx_files(d)[defect], d / name)
    return make


TEACHER_CKPT = 'checkpoint = "{d}/teacher.pt"'

# id -> (files to make, CLI args, exit code, regex the stderr must match); "{d}" is the case's folder
CASES = {
    # recipe
    "recipe-unknown-key": (_text("r.toml", _recipe("epochz = 3")), ["run", "{d}/r.toml"], 1,
                           r"r\.toml: epochz: unknown key; valid keys here are: name, seed, target, task, data"),
    "recipe-unknown-nested-key": (_text("r.toml", _recipe("[distill]\nepoch = 3")), ["run", "{d}/r.toml"], 1,
                                  r"r\.toml: distill\.epoch: unknown key; valid keys here are: epochs, lr"),
    "recipe-wrong-type": (_text("r.toml", _recipe('[distill]\ntemperature = "hot"')), ["run", "{d}/r.toml"], 1,
                          r"r\.toml: distill\.temperature: expected a number or 'auto', got 'hot'\."),
    "recipe-out-of-range": (_text("r.toml", _recipe("[distill]\nalpha = 1.5")), ["run", "{d}/r.toml"], 1,
                            r"r\.toml: distill\.alpha: 1\.5 is out of range; it must be <= 1\.0\."),
    "recipe-zero-batch": (_text("r.toml", _recipe().replace("batch_size = 64", "batch_size = 0")), ["run", "{d}/r.toml"], 1,
                          r"data\.batch_size: 0 is out of range; it must be >= 1\."),
    "recipe-fit-family-without-space": (_text("r.toml", _recipe('[student]\narch = "efficientnet-lite0"\n'
                                                             'params = { pretrained = false }\nsize = "fit"')),
                                        ["run", "{d}/r.toml"], 1,
                                        r"student\.size: the student family 'efficientnet-lite0' declares no search "
                                        r"space, so it cannot be sized to the budget; register it with MODELS\.register"),
    "recipe-fit-the-teacher": (_text("r.toml", _recipe('[student]\narch = "teacher"\nsize = "fit"')), ["run", "{d}/r.toml"], 1,
                               r"student\.size: 'fit' sizes a student family; the teacher itself has no knobs"),
    "recipe-nan-lr": (_text("r.toml", _recipe("[distill]\nlr = nan")), ["run", "{d}/r.toml"], 1,
                      r"distill\.lr: expected a finite number, got nan\."),
    "recipe-section-not-table": (_text("r.toml", 'data = 3\nname = "x"\n'), ["run", "{d}/r.toml"], 1,
                                 r"r\.toml: data: expected a table, got 3\."),
    "recipe-unknown-loss": (_text("r.toml", _recipe('[distill]\nlosses = [{ name = "kdd" }]').replace(
                                'losses = [{ name = "kd" }]\n', "", 1)), ["run", "{d}/r.toml"], 1,
                            r"distill\.losses\[0\]\.name: unknown loss 'kdd'; choose one of: at, ce, crd, dkd, .*, kd, "),
    "recipe-unknown-loss-param": (_text("r.toml", _recipe('[distill]\nlosses = [{ name = "kd", params = { tau = 2 } }]').replace(
                                      'losses = [{ name = "kd" }]\n', "", 1)), ["run", "{d}/r.toml"], 1,
                                  r"distill\.losses\[0\]\.params\.tau: unknown parameter of loss 'kd'; valid ones are: alpha, temperature\."),
    "recipe-empty-losses": (_text("r.toml", _recipe("[distill]\nlosses = []").replace('losses = [{ name = "kd" }]\n', "", 1)),
                            ["run", "{d}/r.toml"], 1, r"distill\.losses: the list is empty; add at least one loss"),
    "recipe-unknown-target": (_text("r.toml", _recipe().replace('target = "laptop-x86"', 'target = "nokia-3310"')),
                              ["run", "{d}/r.toml"], 1, r"target 'nokia-3310' is unknown; choose one of: .*laptop-x86"),
    "recipe-unknown-dataset": (_text("r.toml", _recipe().replace('dataset = "digits"', 'dataset = "mnistt"')),
                               ["run", "{d}/r.toml"], 1, r"data\.dataset: unknown dataset 'mnistt'; choose one of: .*digits"),
    "recipe-unknown-student": (_text("r.toml", _recipe().replace('[student]\narch = "cnn"', '[student]\narch = "resnet9000"')),
                               ["run", "{d}/r.toml"], 1, r"student\.arch: unknown architecture 'resnet9000'; choose one of: .*cnn"),
    "recipe-unknown-student-param": (_text("r.toml", _recipe().replace("params = { width = 4, depth = 1 }", "params = { widht = 4 }")),
                                     ["run", "{d}/r.toml"], 1, r"student\.params\.widht: unknown parameter of 'cnn'; valid ones are: width, depth"),
    "recipe-bad-run-name": (_text("r.toml", _recipe().replace('name = "tiny"', 'name = "a/b"')), ["run", "{d}/r.toml"], 1,
                            r"name: must be a non-empty string without slashes"),
    "recipe-empty-file": (_text("r.toml", ""), ["run", "{d}/r.toml"], 1, r"r\.toml: the recipe is empty; write TOML keys into it\."),
    "recipe-not-toml": (_text("r.toml", "name = \n[[[\n"), ["run", "{d}/r.toml"], 1, r"r\.toml: not valid TOML \(.*\); fix the syntax\."),
    "recipe-not-text": (_text("r.toml", b"\x89PNG\r\n\x1a\n\xff\xfe"), ["run", "{d}/r.toml"], 1, r"r\.toml: the recipe is not UTF-8 text"),
    "recipe-missing": (_text("other", ""), ["run", "{d}/nope.toml"], 1, r"nope\.toml: recipe not found; check the path\."),
    # CLI misuse: exit 2
    "usage-unknown-option": (_text("other", ""), ["run", "--no-such-flag"], 2, r"No such option:? '?--no-such-flag"),
    "usage-unknown-command": (_text("other", ""), ["frobnicate"], 2, r"No such command 'frobnicate'"),
    "usage-unknown-from-stage": (_text("r.toml", _recipe()), ["run", "{d}/r.toml", "--from", "distil"], 2,
                                 r"Invalid value for '--from': 'distil' is not one of 'size', 'teacher', 'student'"),
    "usage-recipe-is-a-folder": (_text("other", ""), ["run", "{d}"], 2, r"is a directory"),
    "usage-run-dir-is-a-file": (_text("r.toml", _recipe()), ["run", "{d}/r.toml", "--run-dir", "{d}/r.toml"], 2, r"is a file"),
    # checkpoints (the teacher stage loads teacher.checkpoint)
    "ckpt-missing": (_text("r.toml", _recipe(teacher=TEACHER_CKPT)), ["run", "{d}/r.toml"], 1,
                     r"teacher\.checkpoint: .*/teacher\.pt does not exist; check the path\."),
    "ckpt-truncated": ([_text("r.toml", _recipe(teacher=TEACHER_CKPT)), _ckpt_truncated], ["run", "{d}/r.toml"], 1,
                       r"teacher\.pt: not a readable PyTorch checkpoint \(.*\); re-save it\."),
    "ckpt-not-a-checkpoint": ([_text("r.toml", _recipe(teacher=TEACHER_CKPT)), _text("teacher.pt", "hello\n")], ["run", "{d}/r.toml"], 1,
                              r"teacher\.pt: not a readable PyTorch checkpoint"),
    "ckpt-wrong-architecture": ([_text("r.toml", _recipe(teacher=TEACHER_CKPT)), _ckpt_wrong_arch], ["run", "{d}/r.toml"], 1,
                                r"teacher\.pt: does not match the recipe's architecture \(missing keys \['features\.0\.weight'.*; "
                                r"unexpected keys \['weight', 'bias'\]\); check the arch and params it was trained with\."),
    "ckpt-wrong-width": ([_text("r.toml", _recipe(teacher=TEACHER_CKPT)), _ckpt_wrong_width], ["run", "{d}/r.toml"], 1,
                         r"teacher\.pt: does not match the recipe's architecture \(shape mismatch \['features\.0\.weight \(16, 1, 3, 3\) vs \(8, 1, 3, 3\)'"),
    "ckpt-no-state-dict": ([_text("r.toml", _recipe(teacher=TEACHER_CKPT)), _ckpt_list], ["run", "{d}/r.toml"], 1,
                           r"teacher\.pt: holds no state_dict; save one with torch\.save\(model\.state_dict\(\), \.\.\.\)\."),
    "ckpt-malicious-pickle": ([_text("r.toml", _recipe(teacher=TEACHER_CKPT)), _ckpt_malicious], ["run", "{d}/r.toml"], 1,
                              r"teacher\.pt: refused to load, it holds objects other than tensors \(.*\); save a state_dict .*"
                              r"or pass --trust-checkpoint if you made this file\."),
    "ckpt-whole-model-needs-trust": ([_text("r.toml", _recipe(teacher=TEACHER_CKPT)), _ckpt_whole_module_wrong_width],
                                     ["run", "{d}/r.toml"], 1, r"teacher\.pt: refused to load.*--trust-checkpoint"),
    "ckpt-trusted-then-checked": ([_text("r.toml", _recipe(teacher=TEACHER_CKPT)), _ckpt_whole_module_wrong_width],
                                  ["run", "{d}/r.toml", "--trust-checkpoint"], 1,
                                  r"(?s)Warning: .*teacher\.pt: fully unpickling it because of --trust-checkpoint; this runs any code"
                                  r".*Error: .*teacher\.pt: does not match the recipe's architecture \(shape mismatch"),
    # targets
    "target-missing-file": (_text("r.toml", _recipe()), ["run", "{d}/r.toml", "--target", "{d}/nope.toml"], 1,
                            r"nope\.toml: target file not found; check the path\."),
    "target-unknown-name": (_text("r.toml", _recipe()), ["run", "{d}/r.toml", "--target", "pager"], 1,
                            r"target 'pager' is unknown; choose one of: .*, or pass a path to a \.toml file\."),
    "target-threads-over-cores": ([_text("r.toml", _recipe()), _text("t.toml", 'name = "t"\ncores = 2\nthreads = 8\n')],
                                  ["run", "{d}/r.toml", "--target", "{d}/t.toml"], 1,
                                  r"t\.toml: threads: 8 is more than the target's 2 cores; lower it\."),
    "target-unknown-key": ([_text("r.toml", _recipe()), _text("t.toml", 'name = "t"\n[budgets]\nlatency_ms = 3\n')],
                           ["run", "{d}/r.toml", "--target", "{d}/t.toml"], 1,
                           r"t\.toml: budgets\.latency_ms: unknown key; valid keys here are: size_mb, p90_ms"),
    # a user's ONNX file through the torch-free commands
    "onnx-inspect-truncated": (_onnx("m.onnx", "truncated"), ["inspect", "{d}/m.onnx"], 1,
                               r"m\.onnx: not a valid ONNX model \(.*\); pass an \.onnx file exported with torch\.onnx\.export"),
    "onnx-bench-not-onnx": (_text("m.onnx", "time,ms\n1,2\n"), ["bench", "{d}/m.onnx", "--runs", "1"], 1,
                            r"m\.onnx: not a valid ONNX model"),
    "onnx-bundle-wrong-opset": (_onnx("m.onnx", "opset-99"), ["bundle", "{d}/m.onnx", "--out", "{d}/out"], 1,
                                r"m\.onnx: uses ONNX opset 99, outside the 7\.\.\d+ that this onnx / onnxruntime support; re-export"),
    "onnx-bench-missing": (_text("other", ""), ["bench", "{d}/nope.onnx"], 1, r"nope\.onnx: model file not found; check the path\."),
    # run folder
    "run-dir-under-a-file": (_text("r.toml", _recipe()), ["run", "{d}/r.toml", "--run-dir", "{d}/r.toml/out"], 1,
                             r"r\.toml/out: cannot write the run folder \(.*\); choose a writable --run-dir\."),
    "run-dir-locked": (_text("r.toml", _recipe()), ["run", "{d}/r.toml"], 1,
                       r"another edgedistill run is using this run folder; wait for it to finish or pass a different --run-dir\."),
}

# Real ``python -m edgedistill`` subprocesses: the malicious pickle and the lock (see the module docstring).
SUBPROCESS = {"ckpt-malicious-pickle", "run-dir-locked"}


def _run_case(name: str, root: Path):
    makers, args, _, _ = CASES[name]
    d = root / name
    d.mkdir()
    for make in (makers if isinstance(makers, list) else [makers]):
        make(d)
    args = [a.replace("{d}", str(d)) for a in args]
    if "--run-dir" not in args and args[0] == "run":
        args += ["--run-dir", str(d / "out")]
    if name == "run-dir-locked":  # another process holds the folder: this one must be refused
        from edgedistill.pipeline import RunLock

        (d / "out").mkdir()
        with RunLock(d / "out"):
            return d, cli(*args)
    return d, (cli if name in SUBPROCESS else edgedistill)(*args)


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    with ThreadPoolExecutor(2) as pool:  # subprocesses in the pool while this thread runs the in-process ones
        futures = {n: pool.submit(_run_case, n, root) for n in CASES if n in SUBPROCESS}
        here = {n: _run_case(n, root) for n in CASES if n not in SUBPROCESS}
        return {**here, **{n: f.result() for n, f in futures.items()}}


def _sentence(stderr: str) -> str:
    """The one line of stderr that is not progress ("[stage] ...", "writing ...") or a Warning: line."""
    lines = [ln for ln in stderr.splitlines()
             if ln.strip() and not ln.startswith(("[", "Warning:")) and not ln.endswith("...")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_cli_bad_input(name, cli_results):
    d, proc = cli_results[name]
    _, _, code, pattern = CASES[name]
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert re.search(pattern, proc.stderr), proc.stderr[-3000:]
    if code == 1:
        line = _sentence(proc.stderr)
        assert line.startswith("Error: ") and line.endswith("."), line
    out = d / "out"
    assert_nothing_half_written(out)
    if name.startswith(("recipe-", "target-")):
        assert not out.exists(), list(out.rglob("*"))  # refused before the run folder was made
    if name.startswith("ckpt-"):
        assert not (out / "01_teacher" / "model.pt").exists()
        stages = json.loads((out / "manifest.json").read_text())["stages"]
        assert stages["teacher"]["status"] == "failed" and set(stages) == {"size", "teacher"}  # size: off, done in no time
    assert not (d / "PWNED").exists()  # no pickle ever ran code


# ---- bad layer path: no built-in loss on this branch reads layers, so a test loss stands in ----

@pytest.fixture
def feature_loss():
    from edgedistill.distill.losses import LOSSES, DistillLoss

    class _Feature(DistillLoss):
        def __init__(self, ctx, student_layer: str = "features.0", teacher_layer: str = "features.0"):
            super().__init__(ctx)
            self.s, self.t = student_layer, teacher_layer

        def student_layers(self):
            return [self.s]

        def teacher_layers(self):
            return [self.t]

    LOSSES.register("test_feature")(_Feature)
    yield "test_feature"
    del LOSSES._items["test_feature"], LOSSES._help["test_feature"]


@pytest.mark.parametrize("param,where", [("student_layer", "student_layer"), ("teacher_layer", "teacher_layer")])
def test_bad_layer_path_is_refused_before_the_run_folder(feature_loss, tiny_recipe, tmp_path, param, where):
    from edgedistill.distill.losses import LOSSES
    from edgedistill.pipeline import run
    from edgedistill.recipe import LossTerm

    assert feature_loss in LOSSES
    tiny_recipe.distill.losses = [LossTerm(name=feature_loss, params={param: "features.9"})]
    with pytest.raises(ConfigError, match=rf"distill\.losses\[0\]\.params\.{where}: module path 'features\.9' does not "
                                          r"exist in the model; valid paths are: features, features\.0, features\.1"):
        run(tiny_recipe, run_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- data: registered datasets with one defect each, through the pipeline ----

def _digits_like(defect: str):
    def factory(cfg, seed):
        from edgedistill.data import ArraySplit, Splits

        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((60, 1, 8, 8)).astype(np.float32), np.arange(60) % 10
        parts = {"train": ArraySplit(x[:40], y[:40], source="train.npy"), "val": ArraySplit(x[40:45], y[40:45], source="val.npy"),
                 "test": ArraySplit(x[45:], y[45:], source="test.npy")}
        if defect == "nan":
            parts["train"].x[3, 0, 2, 2] = np.nan
        elif defect == "inf":
            parts["test"].x[0, 0, 0, 0] = np.inf
        elif defect == "inf-val":
            parts["val"].x[2, 0, 7, 7] = -np.inf
        elif defect == "shape":
            parts["test"] = ArraySplit(rng.standard_normal((15, 1, 9, 9)).astype(np.float32), y[45:])
        elif defect == "label-high":
            parts["train"].y[5] = 10
        elif defect == "label-negative":
            parts["val"].y[1] = -5
        elif defect == "empty-train":
            parts["train"] = ArraySplit(x[:0], y[:0])
        elif defect == "length":
            parts["train"] = ArraySplit(x[:40], y[:39])
        return Splits(num_classes=10, input_shape=(1, 8, 8), name=f"bad-{defect}", **parts)

    return factory


@pytest.fixture
def bad_dataset():
    """Registers the defective dataset ``bad-<defect>`` for one test."""
    from edgedistill.data import DATASETS

    names = []

    def register(defect: str) -> str:
        names.append(f"bad-{defect}")
        DATASETS.register(names[-1])(_digits_like(defect))
        return names[-1]

    yield register
    for name in names:
        del DATASETS._items[name], DATASETS._help[name]


# Defects found from the labels and array shapes alone: refused before the run folder is made.
DATA_CASES_AT_LOAD = {
    "shape": r"dataset 'bad-shape': test inputs have shape \(1, 9, 9\), expected \(1, 8, 8\); make every sample the same shape\.",
    "label-high": r"train\.npy sample 5: has label 10, outside 0\.\.9; fix the labels or the class names\.",
    "label-negative": r"val\.npy sample 1: has label -5, outside 0\.\.9",
    "empty-train": r"dataset 'bad-empty-train': the train split is empty; provide more samples or change the split fractions\.",
    "length": r"dataset 'bad-length': train has 40 inputs but 39 labels; they must match\.",
}


@pytest.mark.parametrize("defect", list(DATA_CASES_AT_LOAD))
def test_bad_data_is_refused_before_the_run_folder(defect, bad_dataset, tiny_recipe, tmp_path):
    from edgedistill.pipeline import run

    tiny_recipe.data.dataset = bad_dataset(defect)
    with pytest.raises(DataError, match=DATA_CASES_AT_LOAD[defect]):
        run(tiny_recipe, run_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# NaN/inf are found when the batch holding the sample is read (checking up front would read every
# sample): the stage reading it fails with one sentence naming the file and sample, and leaves nothing.
DATA_CASES_AT_READ = {
    "nan": ("teacher", r"train\.npy sample 3: contains NaN or inf; clean or drop that sample\."),  # read by the training
    "inf-val": ("teacher", r"val\.npy sample 2: contains NaN or inf; clean or drop that sample\."),  # by the epoch's validation
    "inf": ("teacher", r"test\.npy sample 0: contains NaN or inf; clean or drop that sample\."),  # by the teacher's test accuracy
}
@pytest.mark.parametrize("defect", list(DATA_CASES_AT_READ))
def test_nan_or_inf_fails_the_stage_that_reads_it(defect, bad_dataset, tmp_path):
    stage, pattern = DATA_CASES_AT_READ[defect]
    (tmp_path / "r.toml").write_text(_recipe().replace('dataset = "digits"', f'dataset = "{bad_dataset(defect)}"'))
    out = tmp_path / "out"
    proc = edgedistill("run", tmp_path / "r.toml", "--run-dir", out)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert re.fullmatch(f"Error: {pattern}", _sentence(proc.stderr)), proc.stderr[-3000:]
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages[stage]["status"] == "failed" and "outputs" not in stages[stage], stages
    assert list(stages)[-1] == stage  # no later stage ran
    assert_nothing_half_written(out)
    assert not (out / "01_teacher" / "model.pt").exists(), sorted(str(p.relative_to(out)) for p in out.rglob("*"))


def test_missing_fashion_mnist_files(tmp_path):
    from edgedistill.data import DATASETS

    if "fashion-mnist" not in DATASETS:
        pytest.skip("the fashion-mnist loader is not on this branch yet (branch fmnist)")
    (tmp_path / "r.toml").write_text(_recipe().replace('dataset = "digits"', f'dataset = "fashion-mnist"\npath = "{tmp_path}/none"'))
    proc = cli("run", tmp_path / "r.toml", "--run-dir", tmp_path / "out")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert re.search(r"Error: .*none.*Fashion-MNIST", proc.stderr), proc.stderr
    assert not (tmp_path / "out").exists()


# ---- ONNX: checked with onnx.checker and the opset range wherever a user's file enters ----

def _onnx_files(d: Path) -> dict[str, Path]:
    import onnx

    from tests.onnx_models import conv

    good = conv(d / "good.onnx", size=8, classes=10)
    raw = good.read_bytes()
    files = {"truncated": raw[: len(raw) // 2], "not-onnx": b"name,value\n1,2\n", "empty": b""}
    out = {}
    for name, data in files.items():
        (d / f"{name}.onnx").write_bytes(data)
        out[name] = d / f"{name}.onnx"
    for name, field, value in (("opset-99", "opset", 99), ("opset-3", "opset", 3), ("ir-99", "ir", 99)):
        m = onnx.load(str(good))
        if field == "opset":
            m.opset_import[0].version = value
        else:
            m.ir_version = value
        onnx.save(m, str(d / f"{name}.onnx"))
        out[name] = d / f"{name}.onnx"
    return out


ONNX_CASES = {
    "truncated": r"truncated\.onnx: not a valid ONNX model \(Unable to parse proto.*\); pass an \.onnx file",
    "not-onnx": r"not-onnx\.onnx: not a valid ONNX model \(.*\); pass an \.onnx file",
    "empty": r"empty\.onnx: not a valid ONNX model \(.*\); pass an \.onnx file",
    "opset-99": r"opset-99\.onnx: uses ONNX opset 99, outside the 7\.\.\d+ that this onnx / onnxruntime support; re-export",
    "opset-3": r"opset-3\.onnx: uses ONNX opset 3, outside the 7\.\.\d+",
    "ir-99": r"ir-99\.onnx: not a valid ONNX model \(Your model ir_version 99 is higher",
}


@pytest.mark.parametrize("entry", ["verify", "inspect", "bench", "bundle"])
@pytest.mark.parametrize("case", list(ONNX_CASES))
def test_bad_onnx_is_refused_by_every_entry_point(case, entry, tmp_path, digits_splits):
    files = _onnx_files(tmp_path)
    path = files[case]
    with pytest.raises(DataError, match=ONNX_CASES[case]):
        if entry == "verify":
            from edgedistill.verify import verify

            verify({"m": str(path)}, digits_splits.test)
        elif entry == "inspect":
            from edgedistill.onnx_inspect import inspect_model

            inspect_model(str(path))
        elif entry == "bench":
            from edgedistill.bench import benchmark

            benchmark([str(path)], runs=1, warmup=0, min_seconds=0.0)
        else:
            from edgedistill.bundle import write_bundle

            write_bundle(str(path), tmp_path / "bundle", metadata={}, model_card={})
    assert not (tmp_path / "bundle").exists()


def test_onnx_input_shape_not_matching_the_data(tmp_path, digits_splits):
    from edgedistill.data import ArraySplit
    from edgedistill.verify import verify

    from tests.onnx_models import conv

    path = conv(tmp_path / "m.onnx", size=8, classes=10)
    assert verify({"m": str(path)}, digits_splits.test)["m"]["samples"] == len(digits_splits.test)
    wrong = ArraySplit(np.zeros((4, 1, 9, 9), np.float32), np.zeros(4, np.int64))
    with pytest.raises(EdgeDistillError, match=r"m\.onnx: expects input of shape \['batch', 1, 8, 8\], but the data has "
                                               r"samples of shape \[1, 9, 9\]; export the model for this data\."):
        verify({"m": str(path)}, wrong)


# ---- disk full in the middle of the distill stage (an atomic write fails half-way) ----

def test_disk_full_mid_run_is_one_sentence_and_leaves_nothing_half_written(tiny_recipe, tmp_path, monkeypatch, capsys):
    from edgedistill import cli

    real = _io.atomic_write
    failed = []

    def full_disk(path, write, **kw):
        if "03_distill" not in str(path):
            return real(path, write, **kw)

        def half_then_enospc(tmp):
            with open(tmp, "wb") as f:
                f.write(b"\x00" * 1000)  # some bytes land, then the disk is full
            failed.append(tmp)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)

        return real(path, half_then_enospc, **kw)

    monkeypatch.setattr(_io, "atomic_write", full_disk)
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / "out"
    monkeypatch.setattr("sys.argv", ["edgedistill", "run", str(recipe), "--run-dir", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert "Traceback" not in err
    m = re.fullmatch(rf"Error: {re.escape(str(out))}/(03_distill/\S+): cannot write \(no space left on device\); "
                     r"free some disk space \(or pass another --run-dir\), then continue with --resume\.", _sentence(err))
    assert m, err
    assert failed and Path(failed[0]).name.startswith(f".{Path(m.group(1)).name}.")  # it names the file it was writing
    assert not any(Path(t).exists() for t in failed)  # the temporary file was removed
    assert not (out / m.group(1)).exists()
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["teacher"]["status"] == "done" and stages["distill"]["status"] == "failed"
    assert_nothing_half_written(out)


# ---- a resume checkpoint damaged outside our atomic writes (a disk error, a copy cut short) ----

def test_unreadable_resume_checkpoint_says_how_to_restart_the_stage(tiny_recipe, digits_splits, tmp_path):
    from edgedistill.distill.stage import build_terms
    from edgedistill.distill.train import FitConfig, fit
    from edgedistill.errors import StageError
    from edgedistill.models import build_model

    ckpt = tmp_path / "checkpoints" / "last.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"PK\x03\x04 cut short")
    student = build_model("cnn", {"width": 4, "depth": 1}, (1, 8, 8), 10, "s")
    with pytest.raises(StageError, match=rf"{re.escape(str(ckpt))}: the checkpoint to resume from is unreadable \(.+\); "
                                         r"delete it to restart this stage from its beginning, or run without --resume\."):
        fit(student, digits_splits.train, FitConfig(epochs=1, lr=0.01), build_terms(tiny_recipe, 10), tmp_path)


# ---- --trust-checkpoint: off by default, a warning when on ----

def test_trusted_full_pickle_loads_with_a_warning_and_untrusted_is_refused(tmp_path):
    from edgedistill.models import build_model, load_checkpoint

    model = build_model("cnn", {"width": 4, "depth": 1}, (1, 8, 8), 10, "t")
    torch.save(model, tmp_path / "whole.pt")  # a whole pickled module, not a state_dict
    with pytest.raises(EdgeDistillError, match=r"whole\.pt: refused to load.*pass --trust-checkpoint if you made this file"):
        load_checkpoint(tmp_path / "whole.pt", build_model("cnn", {"width": 4, "depth": 1}, (1, 8, 8), 10, "t"))
    warnings = []
    target = build_model("cnn", {"width": 4, "depth": 1}, (1, 8, 8), 10, "t")
    load_checkpoint(tmp_path / "whole.pt", target, trust=True, warn=warnings.append)
    assert len(warnings) == 1 and "fully unpickling it because of --trust-checkpoint" in warnings[0]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), target.state_dict().values()))
