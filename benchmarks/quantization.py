"""Quantization benchmark on Fashion-MNIST: FP32 vs PTQ (MinMax / Entropy / Percentile), PTQ with the
accuracy-aware fallback, and QAT -- accuracy on the 10,000-image test set, file size, p90 latency at
1 thread (interleaved A B A B runs through ``edgedistill.bench.benchmark``) and the INT8 speed-up.

    PYTHONPATH=$PWD nice -n 10 python benchmarks/quantization.py            # ~20 min on 2 shared cores
    PYTHONPATH=$PWD nice -n 10 python benchmarks/quantization.py --rebench-batch 32   # re-time those models

Data: the Debian package ``dataset-fashion-mnist`` (IDX files, read here with numpy). The student is
the registry's ``cnn`` (conv-BN-ReLU, width 32, 3 stages x 2 blocks, ~0.29 M parameters, ~29 M MACs per
28x28 image), trained from scratch with cross-entropy on a subset of the training set; its last 5,000
training images are held out as the validation split that drives the fallback (the test split never does).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._provenance import stamp  # noqa: E402
from edgedistill import _io  # noqa: E402
from edgedistill._machine import isa_flags, machine_info  # noqa: E402
from edgedistill.bench import benchmark  # noqa: E402
from edgedistill.data import ArraySplit, Splits  # noqa: E402
from edgedistill.data.fashion_mnist import find_files, read_idx  # noqa: E402
from edgedistill.distill.losses import LossContext, build_loss  # noqa: E402
from edgedistill.distill.train import FitConfig, Term, fit  # noqa: E402
from edgedistill.export import export_onnx  # noqa: E402
from edgedistill.models import build_model  # noqa: E402
from edgedistill.quant.calibration import calibration_sample  # noqa: E402
from edgedistill.quant.ptq import quantize_int8  # noqa: E402
from edgedistill.quant.qat import QATConfig  # noqa: E402
from edgedistill.quant.qat_train import run_qat  # noqa: E402
from edgedistill.recipe import ExportConfig, PTQConfig  # noqa: E402
from edgedistill.verify import accuracy  # noqa: E402


def load_fmnist(train_samples: int, val_samples: int = 5000) -> Splits:
    files = {k: read_idx(p) for k, p in find_files(None).items()}  # the Debian package's IDX files
    xtr, ytr, xte, yte = files["train_x"], files["train_y"], files["test_x"], files["test_y"]
    order = np.random.default_rng(0).permutation(len(xtr))
    val_idx, train_idx = order[-val_samples:], order[:min(train_samples, len(xtr) - val_samples)]
    mean, std = float(xtr[train_idx].mean()) / 255, float(xtr[train_idx].std()) / 255

    def norm(x):
        return ((x.astype(np.float32) / 255 - mean) / std)[:, None]

    return Splits(ArraySplit(norm(xtr[train_idx]), ytr[train_idx].astype(np.int64)),
                  ArraySplit(norm(xtr[val_idx]), ytr[val_idx].astype(np.int64)),
                  ArraySplit(norm(xte), yte.astype(np.int64)), 10, (1, 28, 28),
                  normalization={"mean": [mean], "std": [std]}, name="fashion-mnist")


def _latency(files: dict[str, Path], batch_size: int) -> tuple[dict, dict]:
    """Interleaved 1-thread benchmark of ``files``: (raw bench output, {name: size / p50 / p90 / speed-up})."""
    bench = benchmark([str(p) for p in files.values()], threads=1, runs=300, warmup=30, min_seconds=3.0,
                      batch_size=batch_size)
    by_path = {m["path"]: m for m in bench["models"]}
    fp32 = by_path[str(files["fp32"])]
    rows = {}
    for name, path in files.items():
        m = by_path[str(path)]
        rows[name] = {"size_mb": round(m["size_mb"], 4), "size_vs_fp32": round(m["size_mb"] / fp32["size_mb"], 4),
                      "p90_ms": round(m["latency_ms"]["p90"], 4), "p50_ms": round(m["latency_ms"]["p50"], 4),
                      "speedup_p90_vs_fp32": round(fp32["latency_ms"]["p90"] / m["latency_ms"]["p90"], 3)}
    return bench, rows


def rebench(work: Path, out: Path, batch_size: int, repeats: int) -> None:
    """Re-time the models a previous full run left in ``work`` at ``batch_size``, ``repeats`` times
    (each an interleaved run of all six); add every repeat and the per-model medians to ``out``."""
    result = json.loads(out.read_text())
    files = {name: work / (f"{name}.onnx" if name != "qat" else "qat/student_qat_int8.onnx")
             for name in ("fp32", "ptq_minmax", "ptq_entropy", "ptq_percentile", "ptq_fallback", "qat")}
    reps = []
    for _ in range(repeats):
        bench, rows = _latency(files, batch_size)
        reps.append(rows)
    median = {name: {k: round(float(np.median([r[name][k] for r in reps])), 4)
                     for k in ("p50_ms", "p90_ms", "speedup_p90_vs_fp32")} for name in files}
    result.setdefault("latency_by_batch", {})[str(batch_size)] = {
        "machine": bench["machine"], "settings": bench["settings"], "repeats": reps, "median_of_repeats": median,
        "int8_p90_speedup_ge_2.5x": all(median[k]["speedup_p90_vs_fp32"] >= 2.5 for k in median if k != "fp32")}
    _io.write_json(out, stamp(result))
    print(json.dumps(median, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-samples", type=int, default=8000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training")
    ap.add_argument("--max-drop", type=float, default=0.5)
    ap.add_argument("--bench-batch", type=int, default=1)
    ap.add_argument("--work", default="/tmp/edgedistill-quant-bench")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/quantization.json"))
    ap.add_argument("--rebench-batch", type=int, default=None,
                    help="only re-time the models of a previous run in --work at this batch size (adds latency_by_batch)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per --rebench-batch")
    args = ap.parse_args()
    if args.rebench_batch is not None:
        rebench(Path(args.work), Path(args.out), args.rebench_batch, args.repeats)
        return
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    splits = load_fmnist(args.train_samples)
    log = lambda msg: print(f"[{time.time() - t0:6.0f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    # 1. the FP32 student (trained from scratch with cross-entropy; the lead's loop)
    torch.manual_seed(0)
    student = build_model("cnn", {"width": args.width, "depth": 3, "blocks_per_stage": args.blocks},
                          splits.input_shape, 10, "student")
    ce = Term("ce", build_loss("ce", {}, LossContext(num_classes=10), "bench"))
    fit(student, splits.train, FitConfig(epochs=args.epochs, lr=3e-3, weight_decay=1e-4, batch_size=64,
                                         desc="fp32"), [ce], work / "fp32_train", val=splits.val)
    log("fp32 student trained")

    # 2. FP32 export and PTQ with each calibration method (256 calibration images from the train split)
    files = {"fp32": work / "fp32.onnx"}
    export_onnx(student, files["fp32"], splits.test.x[:256], ExportConfig(parity_atol=1e-3))
    calib = calibration_sample(splits.train.x, 256, seed=0)
    ptq_meta = {}
    for method in ("minmax", "entropy", "percentile"):
        files[f"ptq_{method}"] = work / f"ptq_{method}.onnx"
        ptq_meta[method] = quantize_int8(files["fp32"], files[f"ptq_{method}"], calib, PTQConfig(calibration=method))
        log(f"ptq {method} done")

    # 3. PTQ (MinMax) + accuracy-aware fallback, driven by the validation split
    files["ptq_fallback"] = work / "ptq_fallback.onnx"
    fb_meta = quantize_int8(files["fp32"], files["ptq_fallback"], calib,
                            PTQConfig(calibration="minmax", max_drop=args.max_drop),
                            evaluate=lambda p: accuracy(p, splits.val))
    log(f"fallback done: {fb_meta['nodes_excluded']}")

    # 4. QAT: the FP32 student teaches its fake-quantized copy
    qat_cfg = QATConfig(enabled=True, epochs=args.qat_epochs, freeze_observers_epoch=1, lr=2e-4)
    qat_meta = run_qat(student, None, splits, qat_cfg, work / "qat", batch_size=64)
    files["qat"] = work / "qat" / "student_qat_int8.onnx"
    log("qat done")

    # 5. accuracy through ORT on the test split, then interleaved latency at 1 thread
    acc = {name: accuracy(path, splits.test) for name, path in files.items()}
    bench, latency = _latency(files, args.bench_batch)
    rows = {name: {"accuracy": round(acc[name], 4), **latency[name]} for name in files}
    best_ptq = max(acc[k] for k in ("ptq_minmax", "ptq_entropy", "ptq_percentile", "ptq_fallback"))
    result = {
        "cpu": f"{machine_info()['cpu']} ({', '.join(k for k, v in isa_flags().items() if v)})", "machine": machine_info(),
        "setup": {"dataset": "Fashion-MNIST (Debian dataset-fashion-mnist)", "train_samples": len(splits.train),
                  "val_samples": len(splits.val), "test_samples": len(splits.test),
                  "student": {"arch": "cnn", "width": args.width, "depth": 3, "blocks_per_stage": args.blocks},
                  "fp32_epochs": args.epochs, "qat_epochs": args.qat_epochs, "calibration_samples": len(calib),
                  "bench": {"threads": 1, "batch_size": args.bench_batch, "runs": ">=300 interleaved",
                            "provider": "CPUExecutionProvider"}},
        **rows,
        "goals": {
            "qat_within_0.5_points_of_fp32": (acc["fp32"] - acc["qat"]) * 100 <= 0.5,
            "qat_at_least_best_ptq": acc["qat"] >= best_ptq,
            "int8_files_le_30pct_of_fp32": all(rows[k]["size_vs_fp32"] <= 0.30 for k in rows if k != "fp32"),
            "int8_p90_speedup_ge_2.5x": all(rows[k]["speedup_p90_vs_fp32"] >= 2.5 for k in rows if k != "fp32"),
        },
        "fallback": fb_meta["fallback"], "qat_meta": {k: qat_meta[k] for k in ("parity", "export", "history")},
        "bench_raw": bench, "seconds": round(time.time() - t0, 1),
    }
    _io.write_json(args.out, stamp(result))
    print(json.dumps({k: rows[k] for k in rows} | {"goals": result["goals"]}, indent=1))


if __name__ == "__main__":
    main()
