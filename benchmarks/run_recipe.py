"""Run a recipe through the pipeline and keep its report as a results file.

    python benchmarks/run_recipe.py examples/text_classification.toml --out benchmarks/results/text_classification.json

``edgedistill run RECIPE`` (stage by stage; a complete run folder is reused), then the report's models
(metric, size, p50/p90, peak RSS, verdict), the deliverable and why, each stage's seconds, the
student's and the teacher's parameter counts, the machine, the command, the git commit and the load
average before and after.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._provenance import provenance  # noqa: E402
from edgedistill import _io  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--run", default=None, help="run folder (default runs/<recipe file stem>)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--from", dest="from_stage", default=None, help="re-run from this stage (e.g. bench, on a quiet host)")
    ap.add_argument("--note", default=None, help="context to keep beside the figures (e.g. where earlier stages ran)")
    args = ap.parse_args(argv)
    run = Path(args.run or Path("runs") / Path(args.recipe).stem)
    load_before, t0 = os.getloadavg(), time.time()
    prov = provenance(argv)  # what runs: taken before the run
    cmd = [sys.executable, "-m", "edgedistill", "run", args.recipe, "--run-dir", str(run)]
    proc = subprocess.run(cmd + (["--from", args.from_stage] if args.from_stage else []), cwd=ROOT)
    if proc.returncode not in (0, 3):  # 3: the run finished and a budget is missed
        print(f"edgedistill run failed ({proc.returncode})", file=sys.stderr)
        return 1
    report = _io.read_json(run / "report" / "report.json")
    manifest = _io.read_json(run / "manifest.json")
    params = {role: _io.read_json(run / d / "meta.json").get("parameters") for role, d in
              (("teacher", "01_teacher"), ("student", "02_student"))}
    result = {
        **prov,
        "recipe": args.recipe, "machine": report.get("machine"), "target": report["target"],
        "load_average": {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in os.getloadavg()]},
        "parameters": params,
        "models": [{k: m[k] for k in ("name", "role", "precision", "metric", "size_mb", "latency_ms", "peak_rss_mb",
                                      "within_budget")} for m in report["models"]],
        "deliverable": report["deliverable"], "deliverable_reason": report["deliverable_reason"],
        "stage_seconds": {k: v.get("seconds") for k, v in manifest["stages"].items()},
        "sizing": {k: report["sizing"][k] for k in ("chosen", "measured", "seconds", "share_of_run_seconds")}
        | {"candidates": len(report["sizing"]["candidates"])} if report.get("sizing") else None,
        "wall_seconds": round(time.time() - t0, 1),
        "note": args.note,
    }
    _io.write_json(args.out, result)
    for m in result["models"]:
        print(f"{m['name']:<18} {m['metric']['name']} {m['metric']['value']:.4f}  {m['size_mb']:.2f} MB  "
              f"p90 {m['latency_ms']['p90']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
