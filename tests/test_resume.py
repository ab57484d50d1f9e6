"""Kill-and-resume, Ctrl-C and determinism, on real `edgedistill run` subprocesses (see tests/_reliab.py).

Compared bit for bit with an uninterrupted run of the same recipe and seed: the distilled student
(03_distill/model.pt), its training curves, the exported and quantized ONNX files and the verify
metrics. Timings (distill meta seconds, bench latencies) are the only things allowed to differ.
"""

import json
import shutil

import pytest

from edgedistill._io import sha256_file
from tests._reliab import assert_nothing_half_written, cli

pytestmark = pytest.mark.slow

SAME = ["01_teacher/model.pt", "02_student/model.pt", "03_distill/model.pt", "03_distill/curves.csv",
        "05_export/student_fp32.onnx", "06_ptq/student_ptq_int8.onnx", "07_verify/metrics.json"]


def _hashes(run_dir):
    return {rel: sha256_file(run_dir / rel) for rel in SAME}


def _final(run_dir):
    return json.loads((run_dir / "03_distill" / "meta.json").read_text())


def test_same_recipe_and_seed_give_the_same_student_and_metrics(reliab_runs):
    r = reliab_runs
    assert r.rc["a"] == 0 and r.rc["b"] == 0, r.log["a"][-2000:] + r.log["b"][-2000:]
    assert _hashes(r.dir("a")) == _hashes(r.dir("b"))
    assert _final(r.dir("a"))["final"] == _final(r.dir("b"))["final"]
    metrics = json.loads((r.dir("a") / "07_verify" / "metrics.json").read_text())["models"]
    assert metrics["student_fp32"]["metric"]["value"] > 0.5  # it learned: equal metrics are not equal noise
    manifest = json.loads((r.dir("a") / "manifest.json").read_text())
    assert manifest["seed"] == 3
    assert set(manifest["versions"]) >= {"python", "torch", "onnx", "onnxruntime", "numpy"}


def test_sigkill_mid_distill_then_resume_matches_an_uninterrupted_run(reliab_runs):
    r = reliab_runs
    assert r.rc["c1"] == -9, r.log["c1"][-2000:]
    after_kill = r.manifest_after_stop["c"]["stages"]
    assert after_kill["teacher"]["status"] == "done" and after_kill["distill"]["status"] == "running"
    assert r.rc["c"] == 0, r.log["c"][-3000:]
    assert "[teacher] unchanged, skipped" in r.log["c"] and "[distill] resuming..." in r.log["c"]
    resumed = _final(r.dir("c"))["resumed_from"]
    assert resumed is not None and (resumed["epoch"], resumed["step"]) != (0, 0)
    assert _hashes(r.dir("c")) == _hashes(r.dir("a"))
    assert _final(r.dir("c"))["final"] == _final(r.dir("a"))["final"]
    assert_nothing_half_written(r.dir("c"))


def test_ctrl_c_stops_at_a_clean_point_says_how_to_resume_and_resume_finishes(reliab_runs):
    r = reliab_runs
    out = r.log["d1"]
    assert r.rc["d1"] == 130, out[-2000:]
    assert "Traceback" not in out
    assert "Ctrl-C: stopping at the next clean point" in out
    ckpt = r.dir("d") / "03_distill" / "checkpoints" / "last.pt"
    assert f"Interrupted in the distill stage (epoch " in out
    assert f"the checkpoint {ckpt} is kept; continue with `edgedistill run {r.recipe} --run-dir {r.dir('d')} --resume`." in out
    assert r.manifest_after_stop["d"]["stages"]["distill"]["status"] == "interrupted"
    assert r.rc["d"] == 0, r.log["d"][-3000:]
    assert _final(r.dir("d"))["resumed_from"] is not None
    assert _hashes(r.dir("d")) == _hashes(r.dir("a"))
    assert _final(r.dir("d"))["final"] == _final(r.dir("a"))["final"]
    assert_nothing_half_written(r.dir("d"))


def test_impossible_budget_finishes_the_run_with_exit_3(reliab_runs, tmp_path):
    r = reliab_runs
    run_dir = tmp_path / "run"
    shutil.copytree(r.dir("a"), run_dir)  # a finished run: only bench, report and bundle re-run for a new target
    target = tmp_path / "impossible.toml"
    target.write_text('name = "impossible"\ncores = 1\nthreads = 1\n[budgets]\nsize_mb = 0.000001\np90_ms = 0.000001\n')
    proc = cli("run", r.recipe, "--run-dir", run_dir, "--target", target)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "MISSES size" in proc.stdout
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert report["target"]["name"] == "impossible" and report["models"][-1]["within_budget"] is False
    assert (run_dir / "bundle" / "model.onnx").is_file()  # the run completed: the bundle is still written
    assert_nothing_half_written(run_dir)
