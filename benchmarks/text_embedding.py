"""Text-embedding flagship through the pipeline -> benchmarks/results/text_embedding.json.

    python benchmarks/text_embedding.py [--recipe examples/text_embedding.toml] [--run runs/text_embedding]

1. ``edgedistill run RECIPE`` (skipped stage by stage when the run folder is complete): the teacher's
   embeddings of the transfer corpus (cached), the student distilled, exported, dynamic INT8 after
   ONNX Runtime's BERT fusion, verified (STS-B test Spearman through ONNX Runtime) and bundled;
2. the reference all-MiniLM-L6-v2, exported and quantized by the same package functions
   (``export_onnx`` with the task's exporter and opset, ``quantize_int8`` dynamic with the same fusion),
   once, into ``<run>/refs``;
3. STS-B test Spearman of every file through ONNX Runtime (the run's verify figures for its own files);
4. latency of one 32-token sentence at 1 thread, all five models interleaved (``edgedistill.bench``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._provenance import provenance  # noqa: E402
from edgedistill import _io  # noqa: E402
from edgedistill.bench import benchmark  # noqa: E402
from edgedistill.data.text import _stsb_eval  # noqa: E402
from edgedistill.export import export_onnx  # noqa: E402
from edgedistill.models import count_params  # noqa: E402
from edgedistill.models.text import load_folder, resolve_folder, save_tokenizer  # noqa: E402
from edgedistill.quant.ptq import quantize_int8  # noqa: E402
from edgedistill.recipe import ExportConfig, PTQConfig  # noqa: E402
from edgedistill.tasks.text import Embedding, onnx_text_outputs, spearman  # noqa: E402

GOALS = {"int8_size_mb_max": 20.0, "stsb_test_spearman_min": 0.80, "p90_speedup_vs_minilm_fp32_min": 4.0}


def _minilm_refs(refs: Path, log) -> dict:
    """MiniLM-L6 FP32 and INT8 exported the way the pipeline exports a text student."""
    model = load_folder(resolve_folder("all-MiniLM-L6-v2", "minilm"))
    tok_dir = refs / "tokenizer"
    fp32, int8 = refs / "minilm_fp32.onnx", refs / "minilm_int8.onnx"
    if not int8.is_file():
        print("exporting all-MiniLM-L6-v2", file=log, flush=True)
        save_tokenizer(model, tok_dir)
        _, test = _stsb_eval()
        inputs = Embedding().export_inputs(model, test, 32)
        export_onnx(model, fp32, inputs, ExportConfig(parity_samples=32), exporter="torchscript", opset=Embedding.opset)
        cfg = model.encoder.config
        quantize_int8(fp32, int8, None, PTQConfig(), mode="dynamic",
                      fusion={"model_type": "bert", "num_heads": cfg.num_attention_heads, "hidden_size": cfg.hidden_size})
    params = count_params(model)
    return {"minilm_fp32": {"path": fp32, "tok": tok_dir, "params": params},
            "minilm_int8": {"path": int8, "tok": tok_dir, "params": params}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="examples/text_embedding.toml")
    ap.add_argument("--run", default="runs/text_embedding")
    ap.add_argument("--out", default="benchmarks/results/text_embedding.json")
    args = ap.parse_args(argv)
    log = sys.stderr
    run = Path(args.run)
    t0 = time.time()
    prov = provenance(argv)  # what runs: taken before the run
    cmd = [sys.executable, "-m", "edgedistill", "run", args.recipe, "--run-dir", str(run)]
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode not in (0, 3):  # 3: finished, a budget missed
        print(f"edgedistill run failed ({proc.returncode})", file=log)
        return 1
    report = _io.read_json(run / "report" / "report.json")
    manifest = _io.read_json(run / "manifest.json")
    by_name = {m["name"]: m for m in report["models"]}
    models = {
        "teacher_mpnet": {"path": run / by_name["teacher_fp32"]["path"], "tok": run / "01_teacher" / "tokenizer",
                          "params": _io.read_json(run / "01_teacher" / "meta.json")["parameters"]},
        **_minilm_refs(run / "refs", log),
    }
    student = _io.read_json(run / "02_student" / "meta.json")
    for name in ("student_fp32", "student_int8"):
        models[name] = {"path": run / by_name[name]["path"], "tok": run / "02_student" / "tokenizer",
                        "params": student["parameters"]}
    _, test = _stsb_eval()
    for name, m in models.items():
        run_name = {"teacher_mpnet": "teacher_fp32"}.get(name, name)
        if run_name in by_name:  # the run's own verify stage measured it
            m["stsb_test_spearman"] = round(by_name[run_name]["metric"]["value"], 4)
        else:
            m["stsb_test_spearman"] = round(spearman(test, lambda t, m=m: onnx_text_outputs(m["path"], t, m["tok"])), 4)
        m["size_mb"] = round(_io.file_size_mb(m["path"]), 3)
        print(f"{name}: test {m['stsb_test_spearman']} size {m['size_mb']} MB", file=log, flush=True)
    bench = benchmark([str(m["path"]) for m in models.values()], threads=1, seq_len=32, runs=200, warmup=20,
                      min_seconds=3.0)
    for (name, m), b in zip(models.items(), bench["models"]):
        m["p90_ms"] = round(b["latency_ms"]["p90"], 3)
        m["p50_ms"] = round(b["latency_ms"]["p50"], 3)
        m["latency_runs"] = b["runs"]
    s_int8, mini = models["student_int8"], models["minilm_fp32"]
    distill = _io.read_json(run / "03_distill" / "meta.json")
    result = {
        **prov,
        "machine": bench["machine"],
        "settings": {"threads": 1, "seq_len": 32, "batch": 1, "latency": "edgedistill.bench, models interleaved",
                     "stsb": "Spearman of cosine similarity, ONNX Runtime on the exported files, max_seq_length 128",
                     "recipe": args.recipe, "pipeline": "edgedistill run (task = embedding)"},
        "models": {k: {kk: (str(vv) if isinstance(vv, Path) else vv) for kk, vv in m.items() if kk != "tok"}
                   for k, m in models.items()},
        "student": {"params": student["params"], "vocab": student["vocab"]},
        "training": {"distill_seconds": distill["seconds"], "final": distill["final"],
                     "teacher_cache": distill["teacher_cache"],
                     "stage_seconds": {k: v.get("seconds") for k, v in manifest["stages"].items()}},
        "report_deliverable": report["deliverable"],
        "goals": {**GOALS,
                  "int8_size_mb": s_int8["size_mb"], "int8_size_ok": s_int8["size_mb"] <= GOALS["int8_size_mb_max"],
                  "spearman": s_int8["stsb_test_spearman"],
                  "spearman_ok": s_int8["stsb_test_spearman"] >= GOALS["stsb_test_spearman_min"],
                  "spearman_vs_teacher": round(s_int8["stsb_test_spearman"] / models["teacher_mpnet"]["stsb_test_spearman"], 4),
                  "spearman_vs_minilm": round(s_int8["stsb_test_spearman"] / mini["stsb_test_spearman"], 4),
                  "p90_speedup_vs_minilm_fp32": round(mini["p90_ms"] / s_int8["p90_ms"], 3),
                  "p90_ok": mini["p90_ms"] / s_int8["p90_ms"] >= GOALS["p90_speedup_vs_minilm_fp32_min"]},
        "benchmark_seconds": round(time.time() - t0, 1),
    }
    _io.write_json(args.out, result)
    print(json.dumps(result["goals"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
