"""INT8 that is not slower (issue 20, item 3): FP32 vs INT8 without the speed rules ("before") vs INT8 with
them ("after", :mod:`edgedistill.quant.int8_speed`), batch 1, 1 thread, interleaved A B C A B C ... through
``edgedistill.bench.benchmark``, on the demo student, the Fashion-MNIST flagship student and the width-32
``cnn`` at 28x28 (random weights; the speed-up reference that must stay ~2.5x) and the registry's ``mobilenet``
student at 3x64x64 (random weights; depthwise convolutions on an RGB input, like an image-folder run).

    PYTHONPATH=$PWD python benchmarks/int8_speed.py --runs-dir /path/to/runs --out /tmp/int8_speed.json

Both INT8 models come from the same FP32 file through ``quantize_int8`` with the same calibration samples
(random normal data: this measures speed, not accuracy), the only difference being ``speed_rules``.
Prints a table (p50 / p90 in microseconds, ratios to FP32 per repeat and their median), the load average
around each measurement, and the op list ONNX Runtime actually runs for each model; writes all to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._provenance import stamp  # noqa: E402
from edgedistill._machine import machine_info  # noqa: E402
from edgedistill.bench import benchmark  # noqa: E402
from edgedistill.quant.ptq import quantize_int8  # noqa: E402
from edgedistill.recipe import PTQConfig  # noqa: E402


BUILT = {"cnn width 32": ("cnn", {"width": 32, "depth": 3, "blocks_per_stage": 2}, (1, 28, 28)),
         "mobilenet 3x64x64": ("mobilenet", {}, (3, 64, 64))}


def _build(name: str, path: Path) -> Path:
    import torch

    from edgedistill.export import export_onnx
    from edgedistill.models import build_model
    from edgedistill.recipe import ExportConfig

    arch, params, shape = BUILT[name]
    torch.manual_seed(0)
    model = build_model(arch, params, shape, 10, "student").eval()
    x = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    export_onnx(model, path, x, ExportConfig())
    return path


def _calib(fp32: Path, n: int = 64) -> np.ndarray:
    import onnx

    dims = onnx.load(str(fp32), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return np.random.default_rng(0).standard_normal((n, *[d.dim_value for d in dims[1:]])).astype(np.float32)


def _run_ops(path: Path, tmp: Path) -> list[str]:
    """The node op types of the graph ONNX Runtime runs (ORT_ENABLE_ALL, as the bench's sessions)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "runs",
                    help="folder holding demo/05_export and fashion_mnist/05_export (student_fp32.onnx)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/int8_speed.json"))
    ap.add_argument("--repeats", type=int, default=3, help="interleaved benchmark runs per model set")
    ap.add_argument("--min-seconds", type=float, default=3.0)
    args = ap.parse_args(argv)

    sets = {"demo student": args.runs_dir / "demo/05_export/student_fp32.onnx",
            "flagship student": args.runs_dir / "fashion_mnist/05_export/student_fp32.onnx",
            "cnn width 32": None, "mobilenet 3x64x64": None}
    result = {"machine": machine_info(), "settings": {"threads": 1, "batch_size": 1, "repeats": args.repeats,
                                                      "min_seconds": args.min_seconds,
                                                      "calibration": "64 random-normal samples (speed only)"},
              "models": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, fp32 in sets.items():
            tag = name.split()[0]
            source = str(fp32) if fp32 is not None else f"built here: {BUILT[name]}, random weights"
            if fp32 is None:
                fp32 = _build(name, tmp / f"{tag}_fp32.onnx")
            elif not fp32.exists():
                print(f"{name}: {fp32} not found, skipped")
                result["models"][name] = {"skipped": f"{fp32} not found"}
                continue
            local = tmp / f"{tag}_fp32.onnx"
            if local != fp32:
                local.write_bytes(fp32.read_bytes())
            x = _calib(local)
            before_cfg = PTQConfig(speed_rules=False)
            files = {"fp32": local, "int8 before": tmp / f"{tag}_int8_before.onnx", "int8 after": tmp / f"{tag}_int8_after.onnx"}
            quantize_int8(local, files["int8 before"], x, before_cfg)
            meta = quantize_int8(local, files["int8 after"], x, PTQConfig())
            entry = {"source": source, "int8_speed": meta["int8_speed"],
                     "size_mb": {k: round(os.path.getsize(p) / 1e6, 4) for k, p in files.items()},
                     "ort_ops": {k: _run_ops(p, tmp) for k, p in files.items()}, "repeats": []}
            for _ in range(args.repeats):
                load0 = os.getloadavg()
                bench = benchmark([str(p) for p in files.values()], threads=1, runs=300, warmup=50,
                                  min_seconds=args.min_seconds, batch_size=1)
                by_path = {m["path"]: m["latency_ms"] for m in bench["models"]}
                lat = {k: by_path[str(p)] for k, p in files.items()}
                entry["repeats"].append({
                    "load_avg_before": [round(v, 2) for v in load0], "load_avg_after": [round(v, 2) for v in os.getloadavg()],
                    **{k: {"p50_us": round(v["p50"] * 1e3, 2), "p90_us": round(v["p90"] * 1e3, 2)} for k, v in lat.items()},
                    "ratio_p50": {k: round(lat[k]["p50"] / lat["fp32"]["p50"], 3) for k in files},
                    "ratio_p90": {k: round(lat[k]["p90"] / lat["fp32"]["p90"], 3) for k in files}})
            entry["median_ratio_vs_fp32"] = {
                q: {k: round(float(np.median([r[f"ratio_{q}"][k] for r in entry["repeats"]])), 3) for k in files}
                for q in ("p50", "p90")}
            result["models"][name] = entry
            _print(name, entry)
    result = stamp(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return result


def _print(name: str, e: dict) -> None:
    print(f"\n{name}  ({e['source']})  "
          f"kept FP32: {e['int8_speed']['nodes_in_fp32']}  rewritten: {e['int8_speed']['rewrites']}")
    print(f"  {'repeat':>6}  {'load avg':>16}  " + "  ".join(f"{k + ' p50/p90 us':>24}" for k in ("fp32", "int8 before", "int8 after"))
          + "   before/fp32 p90   after/fp32 p90")
    for i, r in enumerate(e["repeats"]):
        cells = "  ".join(f"{r[k]['p50_us']:>11.2f} / {r[k]['p90_us']:>9.2f}" for k in ("fp32", "int8 before", "int8 after"))
        la = "/".join(f"{v:.2f}" for v in r["load_avg_before"])
        print(f"  {i:>6}  {la:>16}  {cells}   {r['ratio_p90']['int8 before']:>15.3f}   {r['ratio_p90']['int8 after']:>14.3f}")
    m = e["median_ratio_vs_fp32"]
    print(f"  median ratio to FP32: before p50 {m['p50']['int8 before']:.3f} p90 {m['p90']['int8 before']:.3f};"
          f"  after p50 {m['p50']['int8 after']:.3f} p90 {m['p90']['int8 after']:.3f}")
    for k, ops in e["ort_ops"].items():
        print(f"  ORT runs ({k}, {len(ops)} nodes): {' '.join(ops)}")


if __name__ == "__main__":
    main()
