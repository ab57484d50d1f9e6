"""End-to-end: the CLI runs a tiny recipe; report.json follows the contract; skip, --from, lock, exit codes.

One full run is made per module (``finished_run``) and never changed: tests that only read it share it,
tests that re-run stages in it get their own copy (``run_copy``), so the tests pass in any order.
The CLI runs in this process (tests/_cli.py); subprocesses only where another process is the point.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgedistill._machine import int8_dot_exact
from edgedistill.ort_session import PRECISE_INT8, required_config
from tests._cli import edgedistill

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """(folder, result): ``edgedistill run tiny.toml --run-dir folder/out`` finished once. Read-only: copy it
    with ``run_copy`` to change it."""
    from tests.conftest import TINY_RECIPE

    d = tmp_path_factory.mktemp("run")
    (d / "tiny.toml").write_text(TINY_RECIPE)
    proc = edgedistill("run", d / "tiny.toml", "--run-dir", d / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d, proc


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the finished run (its recipe and run folder) in this test's own tmp_path, free to change."""
    d, _ = finished_run
    shutil.copyfile(d / "tiny.toml", tmp_path / "tiny.toml")
    shutil.copytree(d / "out", tmp_path / "out")
    return tmp_path


def test_run_writes_the_report_contract(finished_run):
    d, proc = finished_run
    assert proc.returncode == 0, proc.stderr
    report = json.loads((d / "out" / "report" / "report.json").read_text())
    assert report["target"]["name"] == "laptop-x86"
    assert report["target"]["budgets"]["size_mb"] == 20.0
    names = [m["name"] for m in report["models"]]
    assert names == ["teacher_fp32", "student_fp32", "student_qat_int8", "student_int8"]  # stage order after FP32
    assert report["deliverable"] in names[1:] and report["deliverable"] in report["deliverable_reason"]
    for m in report["models"]:
        assert m["role"] in ("teacher", "student") and m["precision"] in ("fp32", "int8")
        assert (d / "out" / m["path"]).is_file()
        assert m["metric"]["name"] == "accuracy" and 0.0 <= m["metric"]["value"] <= 1.0
        assert m["size_mb"] > 0 and set(m["latency_ms"]) == {"p50", "p90", "p99", "mean", "ci95"}
        assert m["latency_ms"]["p50"] <= m["latency_ms"]["p90"] <= m["latency_ms"]["p99"]
        for q in ("p50", "p90"):  # the 95 % interval brackets its percentile
            assert m["latency_ms"]["ci95"][q][0] <= m["latency_ms"][q] <= m["latency_ms"]["ci95"][q][1]
        assert m["peak_rss_mb"] > 0 and m["within_budget"] is True and m["violations"] == []
    import onnx

    for m in report["models"]:  # an app's code does not depend on which model was delivered
        g = onnx.load(str(d / "out" / m["path"])).graph
        assert ([i.name for i in g.input], [o.name for o in g.output]) == (["input"], ["output"]), m["name"]
    int8 = onnx.load(str(d / "out" / report["models"][2]["path"]))
    assert any(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4 for t in int8.graph.initializer)
    assert sum(n.op_type == "QuantizeLinear" for n in int8.graph.node) > 0
    assert [c["name"] for c in report["comparisons"]] == names[1:] and report["favour"] == "latency"
    teacher = report["models"][0]
    for c, m in zip(report["comparisons"], report["models"][1:]):
        assert c["points_lost"] == round(100 * (teacher["metric"]["value"] - m["metric"]["value"]), 2)
        assert c["smaller_x"] == round(teacher["size_mb"] / m["size_mb"], 2)
    assert isinstance(report["warnings"], list) and all(f"warning: {w}" in proc.stdout for w in report["warnings"])
    kernels = report["int8_kernels"]  # the PTQ file's arithmetic against this host's INT8 kernels
    assert kernels["samples"] > 0 and kernels["top1_agreement"] >= 0.99  # edgedistill's session computes the file
    default = kernels.get("default_session")  # ONNX Runtime's default one, measured where it may saturate
    assert (default is not None) == (not int8_dot_exact())
    saturates = bool(default) and default["top1_agreement_with_precise"] < 0.99
    assert saturates == any("default session on this x86 CPU without VNNI" in w for w in report["warnings"])
    ptq_file = d / "out" / next(m["path"] for m in report["models"] if m["name"] == "student_int8")
    assert required_config(ptq_file) == (PRECISE_INT8 if saturates else {})
    page = (d / "out" / "report" / "report.html").read_text()
    assert report["deliverable"] in page and page.count("<img") == 5  # 2 scatters, teacher, distill, QAT curves
    # stdout: one line per model with metric, size, p90 and verdict
    lines = [ln for ln in proc.stdout.splitlines() if " size " in ln]
    assert len(lines) == 4 and all("p90" in ln and "within budget" in ln for ln in lines)


def test_run_folder_has_every_artifact_and_a_manifest(finished_run):
    d, _ = finished_run
    out = d / "out"
    for rel in ["recipe.toml", "01_teacher/model.pt", "01_teacher/meta.json", "03_distill/curves.csv",
                "04_qat/student_qat_int8.onnx", "05_export/student_fp32.onnx", "06_ptq/student_ptq_int8.onnx", "07_verify/metrics.json",
                "08_bench/bench.json", "report/report.md", "report/report.html", "report/metric_vs_size.png",
                "report/curves_teacher.png", "report/curves_distill.png", "report/curves_qat_observe.png",
                "bundle/model.onnx", "bundle/model.ort", "bundle/required_operators.config",
                "bundle/metadata.json", "bundle/MODEL_CARD.md"]:
        assert (out / rel).is_file(), rel
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 0 and "torch" in manifest["versions"]
    for name in ["size", "teacher", "student", "distill", "qat", "export", "ptq", "litert", "verify", "bench", "report", "bundle"]:
        st = manifest["stages"][name]
        assert st["status"] == "done" and st["seconds"] >= 0 and st["outputs"]


def test_rerun_skips_unchanged_stages_and_from_reruns(run_copy):
    from edgedistill.pipeline import run
    from edgedistill.recipe import load_recipe

    d = run_copy
    rec = load_recipe(str(d / "tiny.toml"))
    logs = []
    run(rec, run_dir=d / "out", log=logs.append)
    assert all("skipped" in line for line in logs if line.startswith("[")), logs
    logs.clear()
    run(rec, run_dir=d / "out", from_stage="verify", log=logs.append)
    assert "[export] unchanged, skipped" in logs and "[verify] running..." in logs and "[bench] running..." in logs


def test_changed_recipe_reruns_from_the_changed_stage(run_copy):
    from edgedistill.pipeline import run
    from edgedistill.recipe import load_recipe

    d = run_copy
    rec = load_recipe(str(d / "tiny.toml"))
    rec.ptq.calibration = "percentile"
    logs = []
    run(rec, run_dir=d / "out", log=logs.append)
    assert "[distill] unchanged, skipped" in logs and "[ptq] running..." in logs


def test_missed_budget_exits_3_and_says_so(run_copy):
    d = run_copy
    tgt = d / "tight.toml"
    tgt.write_text('name = "tight"\ncores = 2\nthreads = 1\n[budgets]\nsize_mb = 0.000001\n')
    proc = edgedistill("run", d / "tiny.toml", "--run-dir", d / "out", "--target", tgt)
    assert proc.returncode == 3, proc.stderr
    assert "MISSES size" in proc.stdout
    report = json.loads((d / "out" / "report" / "report.json").read_text())
    assert report["target"]["name"] == "tight" and not report["models"][2]["within_budget"]


def test_bad_recipe_is_one_sentence_exit_1(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[distill]\nepochs = 'x'\n")
    proc = edgedistill("run", p, "--run-dir", tmp_path / "o")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "distill.epochs: expected an integer" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_usage_errors_exit_2(tmp_path):
    for args in (["run", "--no-such-flag"], ["frobnicate"]):
        proc = edgedistill(*args)
        assert proc.returncode == 2, args
        assert "Traceback" not in proc.stderr and proc.stderr.strip(), proc.stderr


def test_unknown_from_stage(tiny_recipe, tmp_path):
    from edgedistill.errors import ConfigError
    from edgedistill.pipeline import run

    with pytest.raises(ConfigError, match=r"--from: unknown stage 'distil'; choose one of: size, teacher, student"):
        run(tiny_recipe, run_dir=tmp_path, from_stage="distil")


def test_second_run_on_same_folder_is_refused(tiny_recipe, tmp_path):
    from edgedistill.errors import EdgeDistillError
    from edgedistill.pipeline import RunLock

    with RunLock(tmp_path):  # held by this process; refused in another one (a real subprocess, as users hit it)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, "-m", "edgedistill", "run", "--run-dir", str(tmp_path)],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 1
        assert "another edgedistill run is using this run folder" in proc.stderr
        with pytest.raises(EdgeDistillError, match="another edgedistill run"):
            with RunLock(tmp_path):
                pass


def test_targets_command_lists_builtins():
    proc = edgedistill("targets", "--json")
    assert proc.returncode == 0
    names = {t["name"] for t in json.loads(proc.stdout)}
    assert {"laptop-x86", "raspberry-pi-4", "android-midrange"} <= names


def test_console_script_smoke(tmp_path):
    """The installed ``edgedistill`` command (the console entry point), once, in its own process."""
    script = Path(sys.executable).parent / "edgedistill"
    if not script.is_file():
        pytest.skip(f"no console script beside {sys.executable} (package not installed in this environment)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's code, whichever checkout installed the script
    proc = subprocess.run([str(script), "targets", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "laptop-x86" in {t["name"] for t in json.loads(proc.stdout)}


def test_a_replaced_teacher_checkpoint_reruns_the_teacher_stage(finished_run, tmp_path):
    """Same path, new bytes: the manifest hashes the file's contents, not only the recipe's string."""
    import torch

    from edgedistill.pipeline import run
    from edgedistill.recipe import load_recipe

    d, _ = finished_run
    ckpt = tmp_path / "teacher.pt"
    shutil.copyfile(d / "out" / "01_teacher" / "model.pt", ckpt)
    rec = load_recipe(str(d / "tiny.toml"))
    rec.teacher.checkpoint = str(ckpt)
    run_dir = tmp_path / "out"
    run(rec, run_dir=run_dir, log=lambda line: None)
    logs = []
    run(rec, run_dir=run_dir, log=logs.append)
    assert "[teacher] unchanged, skipped" in logs
    saved = torch.load(ckpt, weights_only=True)
    weights = saved["state_dict"]
    first = next(k for k, v in weights.items() if v.is_floating_point())
    weights[first] = weights[first] + 0.01  # other weights, same file name
    torch.save(saved, ckpt)
    logs.clear()
    run(rec, run_dir=run_dir, log=logs.append)
    assert "[teacher] running..." in logs and "[distill] running..." in logs


def test_input_files_fingerprint_folders_by_listing(tmp_path):
    from edgedistill.pipeline import input_files
    from edgedistill.recipe import load_recipe

    rec = load_recipe(None)
    rec.data.path = str(tmp_path / "images")
    (tmp_path / "images" / "a").mkdir(parents=True)
    (tmp_path / "images" / "a" / "1.png").write_bytes(b"x")
    before = input_files(rec, ("data",))
    assert input_files(rec, ("student",)) == {}  # a section that names no file
    (tmp_path / "images" / "a" / "2.png").write_bytes(b"y")
    assert input_files(rec, ("data",)) != before
    rec.data.path = str(tmp_path / "nowhere")
    assert input_files(rec, ("data",)) == {rec.data.path: "missing"}


def test_input_files_of_a_python_teacher_is_its_module_source():
    from edgedistill import _io
    from edgedistill.pipeline import input_files
    from edgedistill.recipe import ExtraTeacher, load_recipe

    rec = load_recipe(None)
    rec.distill.teachers = [ExtraTeacher(kind="python", path="py_teacher:logits"),
                            ExtraTeacher(kind="python", path="no_such_module_here:fn")]
    found = input_files(rec, ("distill",))
    assert found["py_teacher:logits"] == _io.sha256_file(ROOT / "tests" / "py_teacher.py")
    assert found["no_such_module_here:fn"] == "missing"


def test_a_plain_rerun_resumes_an_interrupted_stage_and_from_starts_it_over(tiny_recipe, tmp_path, monkeypatch):
    from edgedistill import _signals
    from edgedistill.pipeline import run

    stop = {"armed": True}

    def ctrl_c_in_distill():  # Ctrl-C pressed during the distill stage (fit stops after a whole step)
        return stop["armed"] and (tmp_path / "03_distill").exists() and not (tmp_path / "04_qat").exists()

    monkeypatch.setattr(_signals, "stop_requested", ctrl_c_in_distill)
    tiny_recipe.distill.alpha, tiny_recipe.distill.temperature = 0.3, 4.0  # no auto search: stop in the main fit
    said = []
    with pytest.raises(KeyboardInterrupt):
        run(tiny_recipe, run_dir=tmp_path, log=said.append)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stages"]["distill"]["status"] == "interrupted"
    said.clear()
    with pytest.raises(KeyboardInterrupt):  # --from distill: started over (and stopped again)
        run(tiny_recipe, run_dir=tmp_path, from_stage="distill", log=said.append)
    assert "[distill] running..." in said and not any("resuming" in s for s in said)
    stop["armed"] = False
    said.clear()
    run(tiny_recipe, run_dir=tmp_path, log=said.append)
    assert "[teacher] unchanged, skipped" in said
    assert "[distill] resuming the interrupted stage from its last checkpoint (`--from distill` starts it over)..." in said
    meta = json.loads((tmp_path / "03_distill" / "meta.json").read_text())
    assert meta["resumed_from"] == {"epoch": 0, "step": 1}


def test_names_are_checked_before_any_data_is_read_and_a_skipped_rerun_reads_none(run_copy, monkeypatch):
    import edgedistill.data
    from edgedistill.errors import ConfigError
    from edgedistill.pipeline import run
    from edgedistill.recipe import load_recipe

    tiny_recipe, out = load_recipe(str(run_copy / "tiny.toml")), run_copy / "out"
    report = json.loads((out / "report" / "report.json").read_text())

    def no_data(*a, **kw):
        raise AssertionError("the data was read")

    monkeypatch.setattr(edgedistill.data, "load_data", no_data)
    said = []
    assert run(tiny_recipe, run_dir=out, log=said.append) == report  # every stage skipped, no data read
    assert [line for line in said if line.startswith("[")] == [f"[{s}] unchanged, skipped" for s in (
        "size", "teacher", "student", "distill", "qat", "export", "ptq", "litert", "verify", "bench", "report", "bundle")]
    typo = tiny_recipe.teacher.params | {"widht": 3}
    tiny_recipe.teacher.params = typo
    with pytest.raises(ConfigError, match=r"teacher\.params\.widht: unknown parameter of 'cnn'"):
        run(tiny_recipe, run_dir=run_copy / "other", log=said.append)
    tiny_recipe.teacher.params = {"width": 8, "depth": 1}
    tiny_recipe.distill.losses[0].params = {"temprature": 2.0}
    with pytest.raises(ConfigError, match=r"distill\.losses\[0\]\.params\.temprature: unknown parameter of loss 'kd'"):
        run(tiny_recipe, run_dir=run_copy / "other", log=said.append)
    assert not (run_copy / "other").exists()
