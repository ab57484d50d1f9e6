"""Kill-and-resume, Ctrl-C, determinism and an impossible budget, on real `edgedistill run` subprocesses
(see tests/_reliab.py: run a uninterrupted against an impossible target, run c SIGKILLed, resumed,
Ctrl-C'd and resumed).

Compared bit for bit between the two: the teacher, the student, the distilled student
(03_distill/model.pt) and its training curves, the exported and quantized ONNX files and the verify
metrics. Only timings and what depends on the target (bench, report, bundle) may differ: the
tolerance measured is zero.
"""

import json
import re

import pytest

from edgedistill._io import sha256_file
from tests._reliab import assert_nothing_half_written

pytestmark = pytest.mark.slow

SAME = ["01_teacher/model.pt", "02_student/model.pt", "03_distill/model.pt", "03_distill/curves.csv",
        "05_export/student_fp32.onnx", "06_ptq/student_ptq_int8.onnx", "07_verify/metrics.json"]


def _hashes(run_dir):
    return {rel: sha256_file(run_dir / rel) for rel in SAME}


def _distill(run_dir):
    return json.loads((run_dir / "03_distill" / "meta.json").read_text())


def test_same_recipe_and_seed_give_the_same_models_and_metrics(reliab_runs):
    r = reliab_runs
    assert r.rc["a"] == 3, r.log["a"][-3000:]  # 3: the impossible target's budget is missed, the run completes
    # The teacher stage trained uninterrupted in both processes: same seed, same bytes.
    for rel in ("01_teacher/model.pt", "02_student/model.pt"):
        assert sha256_file(r.dir("a") / rel) == sha256_file(r.dir("c") / rel), rel
    accuracy = [json.loads((r.dir(n) / "01_teacher" / "meta.json").read_text())["test_accuracy_torch"] for n in "ac"]
    assert accuracy[0] == accuracy[1] > 0.5
    metrics = json.loads((r.dir("a") / "07_verify" / "metrics.json").read_text())["models"]
    assert metrics["student_fp32"]["metric"]["value"] > 0.5  # it learned: equal metrics are not equal noise
    manifest = json.loads((r.dir("a") / "manifest.json").read_text())
    assert manifest["seed"] == 3
    assert set(manifest["versions"]) >= {"python", "torch", "onnx", "onnxruntime", "numpy"}


def test_sigkill_mid_distill_then_resume(reliab_runs):
    r = reliab_runs
    assert r.rc["c1_stopped"] and r.rc["c1"] == -9, r.log["c1"][-2000:]
    after_kill = r.manifest_after_stop["c1"]["stages"]
    assert after_kill["teacher"]["status"] == "done" and after_kill["distill"]["status"] == "running"
    assert "[teacher] unchanged, skipped" in r.log["c2"] and "[distill] resuming..." in r.log["c2"]
    assert r.rc["c2_stopped"], r.log["c2"][-2000:]  # the resumed run trained on and wrote a checkpoint of its own


def test_ctrl_c_stops_at_a_clean_point_says_how_to_resume_and_resume_finishes(reliab_runs):
    r = reliab_runs
    out, ckpt = r.log["c2"], r.dir("c") / "03_distill" / "checkpoints" / "last.pt"
    assert r.rc["c2"] == 130, out[-2000:]
    assert "Traceback" not in out
    assert "Ctrl-C: stopping at the next clean point" in out
    where = re.search(r"Interrupted in the distill stage \(epoch (\d+), step (\d+)\): the checkpoint (\S+) is kept; "
                      r"continue with `edgedistill run (\S+) --run-dir (\S+) --resume`\.", out)
    assert where, out[-2000:]
    assert (where[3], where[4], where[5]) == (str(ckpt), str(r.recipe), str(r.dir("c")))
    assert r.manifest_after_stop["c2"]["stages"]["distill"]["status"] == "interrupted"
    assert r.rc["c3"] == 0, r.log["c3"][-3000:]
    assert "[distill] resuming..." in r.log["c3"]
    # c3 went on from exactly where Ctrl-C stopped c2 (epochs count from 1 in the message, 0 in the checkpoint)
    assert _distill(r.dir("c"))["resumed_from"] == {"epoch": int(where[1]) - 1, "step": int(where[2])}


def test_interrupted_twice_run_ends_bit_identical_to_an_uninterrupted_one(reliab_runs):
    r = reliab_runs
    assert r.rc["c3"] == 0 and r.rc["a"] == 3
    assert _hashes(r.dir("c")) == _hashes(r.dir("a"))
    assert _distill(r.dir("c"))["final"] == _distill(r.dir("a"))["final"]
    assert_nothing_half_written(r.dir("c"))


def test_impossible_budget_finishes_the_run_with_exit_3(reliab_runs):
    r = reliab_runs
    assert r.rc["a"] == 3, r.log["a"][-3000:]
    assert "Traceback" not in r.log["a"] and "MISSES size" in r.log["a"]
    report = json.loads((r.dir("a") / "report" / "report.json").read_text())
    assert report["target"]["name"] == "impossible" and report["models"][-1]["within_budget"] is False
    assert (r.dir("a") / "bundle" / "model.onnx").is_file()  # the run completed: the bundle is still written
    assert_nothing_half_written(r.dir("a"))
