"""Fashion-MNIST flagship: teacher FP32 vs student trained alone vs distilled vs distilled + INT8.

    python benchmarks/fashion_mnist.py [--recipe examples/fashion_mnist.toml] [--run-dir runs/fashion-mnist]
                                       [--part all|pipeline|scratch|measure] [--threads 1]

``pipeline`` runs ``edgedistill run`` on the recipe (finished stages are skipped on a re-run);
``scratch`` trains the same student with the same loop, epochs and seed on the labels alone (no
teacher) and exports it; ``measure`` takes every model's test accuracy through ONNX Runtime, then
benchmarks the four ONNX files interleaved at ``--threads`` on the recipe's target and writes
``benchmarks/results/fashion_mnist.json``. Figures are measured on this host, never scaled.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._provenance import stamp  # noqa: E402
from edgedistill import _io  # noqa: E402
from edgedistill._machine import machine_info  # noqa: E402
from edgedistill.recipe import load_recipe  # noqa: E402

GOALS = {"teacher_accuracy": 0.93, "int8_over_teacher_accuracy": 0.99, "size_ratio": 20.0, "p90_ratio": 10.0,
         "gap_closed": 0.5}


def run_pipeline(recipe, run_dir: Path) -> None:
    from edgedistill.pipeline import run

    run(recipe, run_dir, resume=True)  # an interrupted stage continues from its last checkpoint


def train_scratch(recipe, run_dir: Path) -> dict:
    """The student trained alone: the pipeline's own loop, CE on the labels, the distill stage's settings."""
    import torch

    from edgedistill.data import load_data
    from edgedistill.distill.losses import LossContext, build_loss
    from edgedistill.distill.train import FitConfig, Term, evaluate_accuracy, fit
    from edgedistill.export import export_onnx
    from edgedistill.models import build_model, count_params, save_checkpoint

    out = run_dir / "scratch"
    if (out / "meta.json").exists():
        return json.loads((out / "meta.json").read_text())
    splits = load_data(recipe.data, recipe.seed)
    torch.manual_seed(recipe.seed)  # the same initial weights as the pipeline's student stage
    model = build_model(recipe.student.arch, recipe.student.params, splits.input_shape, splits.num_classes, "student")
    d = recipe.distill
    cfg = FitConfig(epochs=d.epochs, lr=d.lr, weight_decay=d.weight_decay, optimizer=d.optimizer, scheduler=d.scheduler,
                    batch_size=recipe.data.batch_size, seed=recipe.seed, device=d.device, amp=d.amp, desc="scratch")
    ce = build_loss("ce", {}, LossContext(num_classes=splits.num_classes), "scratch")
    result = fit(model, splits.train, cfg, [Term("ce", ce)], out, val=splits.val)
    save_checkpoint(out / "model.pt", model)
    exported = export_onnx(model, out / "student_scratch_fp32.onnx", splits.test.x, recipe.export, {"role": "student-scratch"})
    meta = {"epochs": d.epochs, "seconds": round(result.seconds, 2), "parameters": count_params(model),
            "test_accuracy_torch": evaluate_accuracy(model, splits.test), "export": exported}
    _io.write_json(out / "meta.json", meta)
    return meta


def measure(recipe, run_dir: Path, threads: int) -> dict:
    from edgedistill.bench import benchmark
    from edgedistill.data import load_data
    from edgedistill.targets import load_target
    from edgedistill.verify import accuracy

    manifest = json.loads((run_dir / "manifest.json").read_text())
    read = lambda p: json.loads((run_dir / p).read_text())  # noqa: E731
    models = {
        "teacher": (run_dir / "05_export/teacher_fp32.onnx", read("01_teacher/meta.json")["parameters"],
                    manifest["stages"]["teacher"]["seconds"]),
        "student_scratch": (run_dir / "scratch/student_scratch_fp32.onnx", read("scratch/meta.json")["parameters"],
                            read("scratch/meta.json")["seconds"]),
        "student_distilled": (run_dir / "05_export/student_fp32.onnx", read("03_distill/meta.json")["parameters"],
                              manifest["stages"]["distill"]["seconds"]),
        "student_int8": (run_dir / "06_ptq/student_ptq_int8.onnx", read("03_distill/meta.json")["parameters"],
                         manifest["stages"]["ptq"]["seconds"]),
    }
    splits = load_data(recipe.data, recipe.seed)
    target = load_target(recipe.target)
    print(f"benchmarking {len(models)} models at {threads} thread(s)...", file=sys.stderr)
    bench = benchmark([str(p) for p, _, _ in models.values()], target=target, threads=threads, runs=recipe.bench.runs,
                      warmup=recipe.bench.warmup, min_seconds=recipe.bench.min_seconds, deliverable=None)
    table = {}
    for (name, (path, params, seconds)), b in zip(models.items(), bench["models"]):
        table[name] = {"accuracy": round(accuracy(path, splits.test), 4), "params": int(params),
                       "size_mb": round(_io.file_size_mb(path), 4), "p90_ms": round(b["latency_ms"]["p90"], 4),
                       "p50_ms": round(b["latency_ms"]["p50"], 4), "mean_ms": round(b["latency_ms"]["mean"], 4),
                       "runs": b["runs"], "file": str(path.relative_to(run_dir)),
                       "train_seconds" if name != "student_int8" else "ptq_seconds": round(seconds, 1)}
    t, s, d, q = (table[k] for k in ("teacher", "student_scratch", "student_distilled", "student_int8"))
    for row in table.values():
        row["size_ratio_to_teacher"] = round(t["size_mb"] / row["size_mb"], 2)
        row["speed_ratio_to_teacher_p90"] = round(t["p90_ms"] / row["p90_ms"], 2)
    gap = t["accuracy"] - s["accuracy"]
    goals = {
        "teacher_accuracy": {"measured": t["accuracy"], "goal": GOALS["teacher_accuracy"]},
        "int8_over_teacher_accuracy": {"measured": round(q["accuracy"] / t["accuracy"], 4),
                                       "goal": GOALS["int8_over_teacher_accuracy"]},
        "size_ratio": {"measured": q["size_ratio_to_teacher"], "goal": GOALS["size_ratio"]},
        "p90_ratio": {"measured": q["speed_ratio_to_teacher_p90"], "goal": GOALS["p90_ratio"]},
        "gap_closed": {"measured": round((d["accuracy"] - s["accuracy"]) / gap, 3) if gap > 0 else None,
                       "goal": GOALS["gap_closed"], "note": "(distilled - scratch) / (teacher - scratch), FP32 students"},
    }
    for g in goals.values():
        g["met"] = g["measured"] is not None and g["measured"] >= g["goal"]
    info = machine_info()
    return {
        "cpu": info["cpu"], "machine": info, "target": target.name,
        "threads": threads, "host_matches_target": bench.get("host_matches_target"),
        "recipe": str(recipe.name), "test_samples": len(splits.test), **table, "goals": goals,
        "stage_seconds": {k: v.get("seconds") for k, v in manifest["stages"].items()},
        "bench_settings": bench["settings"], "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def markdown(result: dict) -> str:
    """The README table: one row per model, with the ratios to the teacher's FP32 ONNX file."""
    lines = ["| model | test accuracy | parameters | file (MB) | p90 (ms, 1 thread) | smaller | faster (p90) | training |",
             "|---|---|---|---|---|---|---|---|"]
    for key, label in (("teacher", "teacher FP32"), ("student_scratch", "student, trained alone, FP32"),
                       ("student_distilled", "student, distilled, FP32"), ("student_int8", "student, distilled, INT8")):
        r = result[key]
        secs = r.get("train_seconds")
        train = f"{secs / 60:.1f} min" if secs is not None else f"PTQ {r.get('ptq_seconds', 0):.0f} s"
        lines.append(f"| {label} | {100 * r['accuracy']:.2f} % | {r['params']:,} | {r['size_mb']:.3f} | {r['p90_ms']:.3f} "
                     f"| {r['size_ratio_to_teacher']:.1f}x | {r['speed_ratio_to_teacher_p90']:.1f}x | {train} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "examples" / "fashion_mnist.toml"))
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "fashion-mnist"))
    ap.add_argument("--part", choices=["all", "pipeline", "scratch", "measure", "table"], default="all")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the latency benchmark")
    ap.add_argument("--train-threads", type=int, default=1, help="PyTorch threads for training (shared machine)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fashion_mnist.json"))
    args = ap.parse_args()
    recipe, run_dir = load_recipe(args.recipe), Path(args.run_dir)
    if args.part in ("all", "pipeline", "scratch"):
        import torch

        torch.set_num_threads(args.train_threads)
    if args.part in ("all", "pipeline"):
        run_pipeline(recipe, run_dir)
    if args.part in ("all", "scratch"):
        train_scratch(recipe, run_dir)
    if args.part in ("all", "measure"):
        result = measure(recipe, run_dir, args.threads)
        _io.write_json(args.out, stamp(result))
        print(json.dumps({k: result[k] for k in ("cpu", "teacher", "student_scratch", "student_distilled",
                                                 "student_int8", "goals")}, indent=1))
    if args.part in ("all", "table"):
        print(markdown(json.loads(Path(args.out).read_text())))


if __name__ == "__main__":
    main()
