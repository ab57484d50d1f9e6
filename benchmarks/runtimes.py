"""LiteRT beside ONNX Runtime (issue 24): each model's FP32 and INT8 files in each runtime — metric, size, and p50 /
p90 at 1 thread, batch 1, all files of a model timed together (interleaved A B C D A B C D ...) through
``edgedistill.bench.benchmark``, ``--repeats`` times (ratios are the median of the per-repeat ratios).

    pip install 'edgedistill[litert]' scikit-image                       # scikit-image: photos for EfficientNet
    PYTHONPATH=$PWD python benchmarks/runtimes.py --work /tmp/runtimes   # ~45 min on 2 cores, most of it training

Models (``--models``):

- ``digits``: the built-in recipe (``make demo``'s) run by the pipeline with its target's ``runtime = "both"``:
  the ONNX files (``05_export``, ``06_ptq``, ``04_qat``) and the ``.tflite`` files (``06b_litert``: FP32, PT2E INT8
  and the QAT student's INT8) of the same distilled student; metric: the verify stage's test accuracy, through each
  file's own runtime.
- ``fmnist``: the Fashion-MNIST flagship (``examples/fashion_mnist.toml``) likewise.
- ``effnet``: the pretrained EfficientNet-Lite0 from PyPI: ONNX FP32 and edgedistill's PTQ INT8 (its defaults),
  ``.tflite`` FP32 and PT2E INT8 (``edgedistill.litert.export_tflite``), both INT8 files calibrated on the same 100
  photo views; metric: top-1 agreement with the PyTorch FP32 model on views of photos calibration never sees
  (``benchmarks/_photos.py``).
- ``text``: the text-embedding flagship's student architecture (3 of all-MiniLM-L6-v2's layers) at 32 tokens:
  ONNX FP32 and ORT dynamic INT8 (the text task's PTQ), ``.tflite`` FP32 and PT2E INT8 where they convert (what
  fails is recorded; the pipeline's LiteRT stage takes image models only); metric: mean cosine similarity of the
  embeddings with PyTorch's on 12 sentences (the INT8 file calibrated on 12 others).

The pipeline runs use a copy of ``laptop-x86`` with ``runtime = "both"``; their trained models are kept in
``--work``, so a second run re-benchmarks without training.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._provenance import stamp  # noqa: E402
from edgedistill import _io  # noqa: E402
from edgedistill._machine import machine_info  # noqa: E402
from edgedistill.bench import benchmark  # noqa: E402

RECIPES = {"digits": None, "fmnist": ROOT / "examples" / "fashion_mnist.toml"}  # None: the built-in recipe
TARGET = """name = "laptop-x86-both"
description = "laptop-x86 with both runtimes measured (benchmarks/runtimes.py)"
architecture = "x86_64"
cores = 4
threads = 1
ram_mb = 8192
runtime = "both"
[budgets]
size_mb = 20.0
p90_ms = 5.0
peak_ram_mb = 512.0
"""
FILES = {  # the pipeline's model name -> (runtime, precision) shown in the table
    "student_fp32": ("onnxruntime", "fp32"), "student_int8": ("onnxruntime", "int8 PTQ"),
    "student_qat_int8": ("onnxruntime", "int8 QAT"), "student_fp32_litert": ("litert", "fp32"),
    "student_int8_litert": ("litert", "int8 PTQ"), "student_qat_int8_litert": ("litert", "int8 QAT"),
}


def run_pipeline(name: str, work: Path, from_stage: str | None = None) -> dict:
    """Run (or reuse) the recipe with both runtimes; every student file with its verified metric."""
    run_dir = work / name
    target = work / "laptop-x86-both.toml"
    target.write_text(TARGET)
    recipe = RECIPES[name]
    if recipe is None:
        recipe = work / "digits.toml"
        recipe.write_text((ROOT / "edgedistill" / "recipes" / "default.toml").read_text())
    t0 = time.time()
    cmd = [sys.executable, "-m", "edgedistill", "run", str(recipe), "--run-dir", str(run_dir), "--target", str(target)]
    proc = subprocess.run(cmd + (["--from", from_stage] if from_stage else []), cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: the pipeline failed:\n{proc.stderr[-3000:]}")
    report = _io.read_json(run_dir / "report" / "report.json")
    models = {}
    for m in report["models"]:
        if m["name"] in FILES:
            runtime, precision = FILES[m["name"]]
            models[m["name"]] = {"path": str(run_dir / m["path"]), "runtime": runtime, "precision": precision,
                                 "metric": m["metric"]}
    litert_meta = _io.read_json(run_dir / "06b_litert" / "meta.json")
    return {"models": models, "deliverable": report["deliverable"], "deliverable_reason": report["deliverable_reason"],
            "pipeline_seconds": round(time.time() - t0, 1), "litert_stage": litert_meta,
            "pipeline_bench": {m["name"]: m["latency_ms"] for m in report["models"] if m["name"] in FILES}}


def prepare_effnet(work: Path, per_photo: int) -> dict:
    """EfficientNet-Lite0 in both runtimes, FP32 and INT8, and its top-1 agreement with PyTorch FP32 per file."""
    import torch

    from benchmarks._photos import split_views
    from edgedistill.export import export_onnx, export_tflite
    from edgedistill.models import build_model
    from edgedistill.models.efficientnet import IMAGE_SIZE
    from edgedistill.quant.ptq import quantize_int8
    from edgedistill.recipe import ExportConfig, PTQConfig
    from edgedistill.verify import onnx_predict

    d = work / "effnet"
    d.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    _, cal, test = split_views(per_photo, notes)
    calib = cal[0::5][:100]
    torch.set_num_threads(2)
    model = build_model("efficientnet-lite0", {}, (3, IMAGE_SIZE, IMAGE_SIZE), 1000, "model").eval()
    with torch.no_grad():
        ref = np.concatenate([model(torch.from_numpy(test[i:i + 16])).numpy() for i in range(0, len(test), 16)])
    files = {"fp32_onnx": d / "fp32.onnx", "int8_onnx": d / "int8.onnx", "fp32_tflite": d / "fp32.tflite",
             "int8_tflite": d / "int8.tflite"}
    conversion = {}
    if not files["fp32_onnx"].exists():
        export_onnx(model, files["fp32_onnx"], test[:8], ExportConfig(parity_atol=1e-3, parity_rtol=1e-3, parity_samples=8))
    if not files["int8_onnx"].exists():
        quantize_int8(files["fp32_onnx"], files["int8_onnx"], calib, PTQConfig())
    if not files["fp32_tflite"].exists():
        conversion["fp32_tflite"] = export_tflite(model, files["fp32_tflite"], test[:8], parity=(1e-3, 1e-3))
    if not files["int8_tflite"].exists():
        conversion["int8_tflite"] = export_tflite(model, files["int8_tflite"], test[:8], calibration=calib)
    models = {}
    for key, path in files.items():
        out = onnx_predict(path, test, batch_size=16)
        precision, ext = key.split("_")
        models[key] = {"path": str(path), "runtime": "litert" if ext == "tflite" else "onnxruntime",
                       "precision": "int8 PTQ" if precision == "int8" else "fp32",
                       "metric": {"name": "top-1 agreement with PyTorch FP32",
                                  "value": float((out.argmax(1) == ref.argmax(1)).mean())}}
    return {"models": models, "views": {"calibration": len(calib), "test": len(test)}, "photo_notes": notes,
            "conversion": conversion}


SENTENCES = ["A man is playing a guitar.", "Two dogs run across the snowy field.", "The stock market fell sharply today.",
             "A woman slices tomatoes in the kitchen.", "Children are playing football in the park.",
             "The train arrived late at the station.", "A cat sleeps on the warm windowsill.",
             "Scientists discovered a new species of frog.", "He is reading a book under a tree.",
             "The concert was cancelled because of the rain.", "A boy rides his bicycle down the hill.",
             "She painted the old fence bright blue."]
CALIBRATION = ["A chef is cooking pasta in a large pot.", "The plane landed safely despite the storm.",
               "A group of friends are hiking up a mountain.", "The baby is laughing at the puppy.",
               "Prices of fuel rose again this month.", "An old man feeds pigeons in the square.",
               "The team celebrated their victory with a parade.", "A girl is playing the violin on stage.",
               "Heavy traffic slowed the morning commute.", "Two women are talking over coffee.",
               "The museum opened a new exhibition on Egypt.", "A horse gallops along the beach."]


def prepare_text(work: Path, seq_len: int = 32) -> dict:
    """The text-embedding student (3 of all-MiniLM-L6-v2's layers, untrained distillation-wise: the registry's
    build) in both runtimes at a fixed ``seq_len`` (LiteRT's converted model has static shapes): ONNX FP32 (the
    text task's TorchScript export) and ORT dynamic INT8 (the text task's PTQ mode), ``.tflite`` FP32 and PT2E INT8
    (attempted; what fails is recorded). Metric: mean cosine similarity of each file's embeddings with PyTorch's."""
    import torch

    from edgedistill.export import _litert_torch, export_onnx
    from edgedistill.litert import quiet_fds
    from edgedistill.models import build_model
    from edgedistill.quant.ptq import quantize_int8
    from edgedistill.recipe import ExportConfig, PTQConfig
    from edgedistill.verify import model_session

    d = work / "text"
    d.mkdir(parents=True, exist_ok=True)
    model = build_model("transformer-layers", {"layers": [0, 2, 4]}, (), 0, "student").eval()
    def tokens(texts: list[str]) -> dict[str, np.ndarray]:
        t = model.tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
        return {"input_ids": t["input_ids"].astype(np.int64), "attention_mask": t["attention_mask"].astype(np.int64)}

    feeds, calib = tokens(SENTENCES), tokens(CALIBRATION)
    with torch.no_grad():
        ref = model(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    files = {"fp32_onnx": d / "fp32.onnx", "int8_onnx": d / "int8.onnx", "fp32_tflite": d / "fp32.tflite",
             "int8_tflite": d / "int8.tflite"}
    failed = {}
    if not files["fp32_onnx"].exists():
        export_onnx(model, files["fp32_onnx"], feeds, ExportConfig(parity_atol=1e-3, parity_rtol=1e-3),
                    exporter="torchscript", opset=17)
    if not files["int8_onnx"].exists():
        quantize_int8(files["fp32_onnx"], files["int8_onnx"], None, PTQConfig(), mode="dynamic")
    sample = tuple(torch.from_numpy(v[:1]) for v in feeds.values())
    for key in ("fp32_tflite", "int8_tflite"):
        if files[key].exists():
            continue
        printed: list[str] = []
        try:
            with quiet_fds(printed), torch.no_grad():
                litert_torch = _litert_torch()
                if key == "fp32_tflite":
                    edge = litert_torch.convert(model, sample)
                else:
                    from litert_torch.quantize import pt2e_quantizer
                    from litert_torch.quantize.quant_config import QuantConfig
                    from torchao.quantization.pt2e import quantize_pt2e

                    q = pt2e_quantizer.PT2EQuantizer().set_global(
                        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
                    prepared = quantize_pt2e.prepare_pt2e(torch.export.export(model, sample).module(), q)
                    for i in range(len(CALIBRATION)):  # calibration sentences, never the evaluated ones
                        prepared(*(torch.from_numpy(v[i:i + 1]) for v in calib.values()))
                    edge = litert_torch.convert(quantize_pt2e.convert_pt2e(prepared, fold_quantize=False), sample,
                                                quant_config=QuantConfig(pt2e_quantizer=q))
                edge.export(str(files[key]))
        except Exception as e:  # what the converter says is the result
            failed[key] = {"error": (str(e).strip().splitlines() or [type(e).__name__])[0][:300],
                           "converter_output": printed[-5:]}
    models = {}
    for key, path in files.items():
        if key in failed:
            continue
        got = model_session(path).run(None, feeds)[0]
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        precision, ext = key.split("_")
        models[key] = {"path": str(path), "runtime": "litert" if ext == "tflite" else "onnxruntime",
                       "precision": ("int8 dynamic" if ext == "onnx" else "int8 PTQ") if precision == "int8" else "fp32",
                       "metric": {"name": "mean cosine with PyTorch FP32", "value": float(cos.mean())}}
    return {"models": models, "failed": failed, "seq_len": seq_len, "sentences": len(SENTENCES),
            "calibration_sentences": len(CALIBRATION),
            "model": "transformer-layers 0,2,4 of all-MiniLM-L6-v2 (full vocabulary)"}


def measure(models: dict, repeats: int, runs: int, min_seconds: float) -> dict:
    """All files of one model benchmarked together, ``repeats`` times; per file its repeats, medians and ratios."""
    paths = [m["path"] for m in models.values()]
    reps = []
    for _ in range(repeats):
        load = os.getloadavg()[0]
        r = benchmark(paths, threads=1, runs=runs, warmup=20, min_seconds=min_seconds, ci_tolerance=0.03,
                      max_seconds=3 * min_seconds)
        reps.append({"load_average_1min": round(load, 2),
                     "models": {k: {"p50_ms": b["latency_ms"]["p50"], "p90_ms": b["latency_ms"]["p90"],
                                    "size_mb": b["size_mb"], "int8_io_ms": b.get("int8_io_ms"),
                                    "peak_rss_mb": b["peak_rss_mb"], "session_create_ms": b["session_create_ms"]}
                                for k, b in zip(models, r["models"])}})
    for k, m in models.items():
        m["size_mb"] = reps[0]["models"][k]["size_mb"]
        for q in ("p50_ms", "p90_ms", "int8_io_ms", "peak_rss_mb", "session_create_ms"):
            vals = [rep["models"][k][q] for rep in reps if rep["models"][k][q] is not None]
            m[q] = round(statistics.median(vals), 5) if vals else None
    ratios = {}
    for k, m in models.items():  # each file against the FP32 file of its runtime, and against ORT at its precision
        same_rt = next(j for j, o in models.items() if o["runtime"] == m["runtime"] and o["precision"] == "fp32")
        ort = next((j for j, o in models.items() if o["runtime"] == "onnxruntime" and o["precision"] == m["precision"]), None)
        ratios[k] = {f"p90_vs_{same_rt}": _median_ratio(reps, k, same_rt, "p90_ms"),
                     f"p50_vs_{same_rt}": _median_ratio(reps, k, same_rt, "p50_ms")}
        if ort and ort != k:
            ratios[k][f"p90_vs_{ort}"] = _median_ratio(reps, k, ort, "p90_ms")
    for k, m in models.items():
        if m["runtime"] == "litert" and m["precision"].startswith("int8"):
            m["in_process"] = invoke_only(m["path"])
    return {"repeats": reps, "ratios": ratios}


def invoke_only(path: str, rounds: int = 7, block: int = 200) -> dict:
    """For an INT8 ``.tflite``: p50 of ``invoke()`` alone on already-quantized int8 inputs (what an app's native code
    pays besides its own few-element conversion) against the session's ``run`` (numpy quantize + invoke + numpy
    dequantize, what the bench times), blocks interleaved in one process at 1 thread."""
    from edgedistill.bench import random_inputs
    from edgedistill.litert import LiteRTSession

    sess = LiteRTSession(path, threads=1)
    feeds = random_inputs(sess)
    it = sess.interpreter
    ins = it.get_input_details()
    quantized = [(d["index"], q(a)) for d, (_, q), a in zip(ins, sess._feed, feeds.values())]
    quantized = [(i, a.copy()) for i, a in quantized]
    outs = [d["index"] for d in it.get_output_details()]

    def raw() -> None:
        for index, a in quantized:
            it.set_tensor(index, a)
        it.invoke()
        for index in outs:
            it.get_tensor(index)

    def wrapped() -> None:
        sess.run(None, feeds)

    times: dict = {"invoke": [], "run": []}
    for _ in range(rounds):
        for name, fn in (("invoke", raw), ("run", wrapped)):
            for _ in range(block):
                t0 = time.perf_counter_ns()
                fn()
                times[name].append((time.perf_counter_ns() - t0) / 1e6)
    return {f"{k}_p50_ms": round(float(np.percentile(v, 50)), 5) for k, v in times.items()}


def _median_ratio(reps: list, a: str, b: str, q: str) -> float:
    return round(statistics.median(rep["models"][a][q] / rep["models"][b][q] for rep in reps), 3)


def table(results: dict) -> str:
    lines = ["| model | runtime | precision | metric | MB | p50 ms | p90 ms | p90 vs FP32 same runtime |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for k, m in r.get("models", {}).items():
            vs = next((v for key, v in r["ratios"][k].items() if key.startswith("p90_vs_") and
                       r["models"][key[len("p90_vs_"):]]["runtime"] == m["runtime"]), None)
            lines.append(f"| {name} | {m['runtime']} | {m['precision']} | {m['metric']['value']:.4f} | "
                         f"{m['size_mb']:.4f} | {m['p50_ms']:.4f} | {m['p90_ms']:.4f} | {vs:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="digits,fmnist,effnet,text")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgedistill_runtimes"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "runtimes.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--views-per-photo", type=int, default=10)
    ap.add_argument("--from", dest="from_stage", help="re-run the kept pipeline runs from this stage (e.g. litert)")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for name in args.models.split(","):
        print(f"[runtimes] {name} ...", file=sys.stderr, flush=True)
        prepared = (run_pipeline(name, args.work, args.from_stage) if name in RECIPES else prepare_text(args.work) if name == "text"
                    else prepare_effnet(args.work, args.views_per_photo))
        prepared.update(measure(prepared["models"], args.repeats, args.runs, args.min_seconds))
        results[name] = prepared
    timed = {k: v for k, v in results.items() if "ratios" in v}
    print(table(timed))
    out = stamp({"machine": machine_info(), "settings": {"threads": 1, "batch_size": 1, "repeats": args.repeats,
                                                         "runs": args.runs, "min_seconds": args.min_seconds},
                 "models": results, "table": table(timed)}, argv)
    _io.write_json(args.out, out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
