"""How much does `edgedistill bench` add to what it measures? Writes benchmarks/results/bench_overhead.json.

For each model, a bare loop (a fresh Python process: one InferenceSession with the same options,
``for _ in range(n): sess.run(None, feeds)`` timed as a whole) and ``edgedistill.bench.benchmark``
(its worker times every call on its own) are run alternately, A B B A ..., ``--reps`` times each,
so a drifting machine biases both alike. ``overhead_ratio`` = median of our steady-state means /
median of the bare loop's means (1.00 = no overhead). Models: the tiny 8x8 CNN of the demo's size
(a few microseconds: the worst case for per-call overhead) and a 28x28 CNN (about a millisecond).

    PYTHONPATH=$PWD python benchmarks/bench_overhead.py [--reps 5] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

BARE = r"""
import json, sys, time
import onnxruntime as ort
from edgedistill.bench import random_inputs
path, seconds, warmup = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
so.log_severity_level = 3
sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
feeds = random_inputs(sess)
for _ in range(warmup):
    sess.run(None, feeds)
# size the loop from a short probe so it runs about `seconds`
t0 = time.perf_counter(); k = 0
while time.perf_counter() - t0 < 0.05:
    sess.run(None, feeds); k += 1
n = max(50, int(k * seconds / (time.perf_counter() - t0)))
t0 = time.perf_counter()
for _ in range(n):
    sess.run(None, feeds)
print(json.dumps({"mean_ms": (time.perf_counter() - t0) * 1000 / n, "runs": n}))
"""


def _bare(path: str, seconds: float, warmup: int) -> dict:
    out = subprocess.run([sys.executable, "-c", BARE, path, str(seconds), str(warmup)], capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout)


def _ours(path: str, seconds: float, warmup: int) -> dict:
    from edgedistill.bench import benchmark

    m = benchmark([path], threads=1, runs=50, warmup=warmup, min_seconds=seconds)["models"][0]
    return {"mean_ms": m["latency_ms"]["mean"], "p50_ms": m["latency_ms"]["p50"], "runs": m["runs"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_overhead.json"))
    args = ap.parse_args()

    import onnx_models
    from edgedistill._io import write_json
    from edgedistill._machine import machine_info

    tmp = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    models = {"cnn_8x8_demo_size": str(onnx_models.conv(tmp / "small.onnx", channels=8, size=8, classes=10)),
              "cnn_28x28_c32": str(onnx_models.conv(tmp / "medium.onnx", channels=32, size=28, classes=10))}
    rows = []
    for name, path in models.items():
        bare, ours = [], []
        for rep in range(args.reps):
            order = (_bare, _ours) if rep % 2 == 0 else (_ours, _bare)  # A B, B A, ...
            for fn in order:
                r = fn(path, args.seconds, args.warmup)
                (bare if fn is _bare else ours).append(r)
                print(f"{name} rep {rep} {fn.__name__[1:]:<5} mean {r['mean_ms'] * 1000:9.2f} us over {r['runs']} runs",
                      file=sys.stderr)
        b = statistics.median(r["mean_ms"] for r in bare)
        o = statistics.median(r["mean_ms"] for r in ours)
        pair = [x["mean_ms"] / y["mean_ms"] for x, y in zip(ours, bare)]
        rows.append({"model": name, "bare_mean_ms": [r["mean_ms"] for r in bare],
                     "ours_mean_ms": [r["mean_ms"] for r in ours], "ours_p50_ms": [r["p50_ms"] for r in ours],
                     "bare_median_ms": b, "ours_median_ms": o, "overhead_ratio": o / b,
                     "pairwise_ratios": pair})
        print(f"{name}: overhead ratio {o / b:.4f} (pairwise {min(pair):.3f}..{max(pair):.3f})", file=sys.stderr)
    result = {
        "what": "steady-state mean latency of edgedistill.bench.benchmark over a bare session.run loop, same model, "
                "same session options (1 intra-op thread), alternated A B B A in fresh processes",
        "overhead_ratio": max(r["overhead_ratio"] for r in rows),
        "overhead_ratio_note": "the worst of the models below",
        "goal": "<= 1.03",
        "reps": args.reps, "seconds_per_measurement": args.seconds,
        "machine": machine_info(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": rows,
    }
    write_json(args.out, result)
    print(json.dumps({"overhead_ratio": result["overhead_ratio"],
                      **{r["model"]: round(r["overhead_ratio"], 4) for r in rows}}))


if __name__ == "__main__":
    main()
