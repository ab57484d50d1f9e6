"""Resume tolerance and checkpoint cost, measured on real runs. Writes benchmarks/results/reliability.json.

1. Kill-and-resume at several points: one uninterrupted `edgedistill run` of the recipe in
   tests/_reliab.py (digits, seed 3, distill 3 epochs x 40 steps, a checkpoint every 5 steps), then
   for each kill point a copy of its teacher/student stages whose distill stage is SIGKILLed after
   the k-th checkpoint write and continued with `--resume` (a SIGINT point too: Ctrl-C, then
   --resume). Recorded per point: where it resumed from, whether the distilled student, curves,
   ONNX files and verify metrics are byte-identical to the uninterrupted run, the largest absolute
   weight difference and the metric differences (the resume tolerance).
2. Checkpoint cost: the distill stage's training loop (distill.train.fit, in this process, 1 thread)
   with checkpoint_every = 0 (end of epoch only), 5 and 1, interleaved over --reps repetitions;
   seconds per run and the checkpoint file size.

    PYTHONPATH=$PWD nice -n 10 python benchmarks/reliability.py [--reps 5] [--kills 1,6,15]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._provenance import stamp  # noqa: E402
from tests._reliab import RESUME_RECIPE, _inode, popen  # noqa: E402

SAME = ["03_distill/model.pt", "03_distill/curves.csv", "05_export/student_fp32.onnx",
        "06_ptq/student_ptq_int8.onnx", "07_verify/metrics.json"]


def _stop_after(proc: subprocess.Popen, ckpt: Path, writes: int, sig: int) -> int:
    """Send ``sig`` once ``ckpt`` has been (re)written ``writes`` times; return the writes seen."""
    seen, last = 0, _inode(ckpt)
    while proc.poll() is None:
        now = _inode(ckpt)
        if now is not None and now != last:
            seen, last = seen + 1, now
            if seen >= writes:
                proc.send_signal(sig)
                break
        time.sleep(0.002)
    proc.wait()
    return seen


def _weights_diff(a: Path, b: Path) -> float:
    import torch

    sa, sb = (torch.load(p, map_location="cpu", weights_only=True)["state_dict"] for p in (a, b))
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa) if sa.keys() == sb.keys() else float("inf")


def _metrics(run: Path) -> dict:
    models = json.loads((run / "07_verify" / "metrics.json").read_text())["models"]
    return {k: v["metric"]["value"] for k, v in models.items()}


def _fresh_copy(base: Path, dst: Path) -> None:
    """``base``'s teacher and student stages (and their manifest entries) only: the next run starts at distill."""
    dst.mkdir()
    for stage in ("01_teacher", "02_student"):
        shutil.copytree(base / stage, dst / stage)
    manifest = json.loads((base / "manifest.json").read_text())
    manifest["stages"] = {k: v for k, v in manifest["stages"].items() if k in ("teacher", "student")}
    (dst / "manifest.json").write_text(json.dumps(manifest))


def kill_and_resume(root: Path, kills: list[int]) -> dict:
    from edgedistill._io import sha256_file

    recipe = root / "r.toml"
    recipe.write_text(RESUME_RECIPE)
    base = root / "uninterrupted"
    t0 = time.perf_counter()
    rc = popen("run", recipe, "--run-dir", base, log=root / "base.log").wait()
    assert rc == 0, (root / "base.log").read_text()[-2000:]
    base_seconds = time.perf_counter() - t0
    points = []
    for sig, k in [(signal.SIGKILL, k) for k in kills] + [(signal.SIGINT, kills[len(kills) // 2])]:
        run = root / f"{sig.name}-{k}"
        _fresh_copy(base, run)
        first = popen("run", recipe, "--run-dir", run, log=root / f"{run.name}.1.log")
        seen = _stop_after(first, run / "03_distill" / "checkpoints" / "last.pt", k, sig)
        t0 = time.perf_counter()
        rc2 = popen("run", recipe, "--run-dir", run, "--resume", log=root / f"{run.name}.2.log").wait()
        meta = json.loads((run / "03_distill" / "meta.json").read_text()) if rc2 == 0 else {}
        same = {rel: sha256_file(run / rel) == sha256_file(base / rel) for rel in SAME} if rc2 == 0 else {}
        points.append({
            "signal": sig.name, "after_checkpoint_writes": seen, "first_exit_code": first.returncode,
            "resume_exit_code": rc2, "resumed_from": meta.get("resumed_from"),
            "resume_seconds": round(time.perf_counter() - t0, 2),
            "byte_identical": same, "all_byte_identical": bool(same) and all(same.values()),
            "max_abs_weight_diff": _weights_diff(run / SAME[0], base / SAME[0]) if rc2 == 0 else None,
            "metric_diff": {m: v - _metrics(base)[m] for m, v in _metrics(run).items()} if rc2 == 0 else None,
            "final_distill_row_equal": meta.get("final") == json.loads((base / "03_distill" / "meta.json").read_text())["final"],
        })
        print(json.dumps(points[-1]), flush=True)
    return {"uninterrupted_run_seconds": round(base_seconds, 1), "uninterrupted_metrics": _metrics(base), "points": points}


def checkpoint_cost(root: Path, reps: int) -> dict:
    import torch

    from edgedistill.data import load_data
    from edgedistill.distill.stage import build_terms
    from edgedistill.distill.train import FitConfig, fit
    from edgedistill.models import build_model
    from edgedistill.recipe import recipe_from_dict
    from edgedistill._schema import tomllib

    torch.set_num_threads(1)
    recipe = recipe_from_dict(tomllib.loads(RESUME_RECIPE))
    splits = load_data(recipe.data, recipe.seed)
    teacher = build_model(recipe.teacher.arch, recipe.teacher.params, splits.input_shape, splits.num_classes, "t").eval()
    seconds: dict[int, list[float]] = {0: [], 5: [], 1: []}
    size = 0
    steps = recipe.distill.epochs * -(-len(splits.train) // recipe.data.batch_size)
    for rep in range(reps):
        for every in (seconds if rep % 2 == 0 else reversed(list(seconds))):  # A B C, C B A, ...
            out = root / f"fit-{every}-{rep}"
            torch.manual_seed(0)
            student = build_model(recipe.student.arch, recipe.student.params, splits.input_shape, splits.num_classes, "s")
            cfg = FitConfig(epochs=recipe.distill.epochs, lr=recipe.distill.lr, batch_size=recipe.data.batch_size,
                            seed=recipe.seed, checkpoint_every=every, desc="fit")
            t0 = time.perf_counter()
            fit(student, splits.train, cfg, build_terms(recipe, splits.num_classes), out, teacher=teacher)
            seconds[every].append(time.perf_counter() - t0)
            size = max(size, (out / "checkpoints" / "last.pt").stat().st_size) if (out / "checkpoints" / "last.pt").exists() else size
            shutil.rmtree(out)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    writes = {0: recipe.distill.epochs, 5: recipe.distill.epochs + steps // 5 - recipe.distill.epochs, 1: steps}
    return {
        "steps": steps, "reps": reps, "seconds": {str(k): [round(s, 4) for s in v] for k, v in seconds.items()},
        "median_seconds": {str(k): round(v, 4) for k, v in med.items()},
        "checkpoint_writes_approx": {str(k): v for k, v in writes.items()},
        "ms_per_extra_checkpoint_every_1": round(1000 * (med[1] - med[0]) / max(1, steps - recipe.distill.epochs), 3),
        "overhead_ratio_every_5": round(med[5] / med[0], 3),
        "checkpoint_bytes": size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--kills", default="1,6,15", help="kill after this many checkpoint writes (comma-separated)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reliability.json"))
    args = ap.parse_args()
    kills = [int(k) for k in args.kills.split(",")]
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), platform.processor())
    flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        result = {
            "machine": {"cpu": cpu, "avx512_vnni": "avx512_vnni" in flags, "cores": os.cpu_count(),
                        "load_average_at_start": os.getloadavg(), "python": platform.python_version()},
            "kill_and_resume": kill_and_resume(root, kills),
            "checkpoint_cost": checkpoint_cost(root, args.reps),
        }
    result["machine"]["load_average_at_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(stamp(result), indent=2) + "\n")
    print(json.dumps(result["checkpoint_cost"], indent=2))


if __name__ == "__main__":
    main()
