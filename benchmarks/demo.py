"""The README's demo figures: `make demo` in a fresh clone, timed, with the report it writes.

Clones this repository (its committed HEAD) into a temporary folder, runs `make demo` there (virtual
environment, installs, the default digits pipeline), and writes the wall time, each stage's seconds,
every model's metric / size / latency / peak RSS and the deliverable to
``benchmarks/results/demo.json``. The load average before and after is recorded: run it on a quiet
machine to quote the time.

    python benchmarks/demo.py [--out benchmarks/results/demo.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._provenance import provenance  # noqa: E402
from edgedistill._machine import machine_info  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "demo.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "edgedistill"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        prov = provenance(repo=clone)  # the clone's commit: what `make demo` ran (a clone holds no local edits)
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.run(["make", "demo"], cwd=clone, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()
        if proc.returncode not in (0, 3):
            sys.exit(f"make demo failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        run_dir = clone / "runs" / "demo"
        report = json.loads((run_dir / "report" / "report.json").read_text())
        manifest = json.loads((run_dir / "manifest.json").read_text())
    result = {
        "what": "`make demo` in a fresh clone: venv, installs (pip's download cache as found), default digits pipeline",
        **prov, "make_demo_exit_code": proc.returncode, "make_demo_wall_s": round(wall, 1),
        "pipeline_stage_seconds": {k: v["seconds"] for k, v in manifest["stages"].items()},
        "pipeline_seconds": round(sum(v["seconds"] for v in manifest["stages"].values()), 1),
        "load_average_before_after": [load_before, load_after], "machine": machine_info(),
        "target": report["target"], "deliverable": report["deliverable"],
        "deliverable_reason": report["deliverable_reason"],
        "models": [{k: m[k] for k in ("name", "precision", "metric", "size_mb", "latency_ms", "peak_rss_mb",
                                      "within_budget")} for m in report["models"]],
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("make_demo_wall_s", "pipeline_seconds", "deliverable")}))


if __name__ == "__main__":
    main()
