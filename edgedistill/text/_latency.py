"""p90 latency of one tokenised sentence through an ONNX file (onnxruntime + numpy only)."""

from __future__ import annotations

import time

import numpy as np


def latency_ms(path, seq_len: int = 32, threads: int = 1, runs: int = 100, min_seconds: float = 1.0, warmup: int = 10) -> dict:
    """Steady-state latency of a batch of one ``seq_len``-token input; warm-up runs are kept apart."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 2000, size=(1, seq_len)).astype(np.int64)
    ids[0, 0], ids[0, -1] = 101, 102
    feed = {n: (ids if n == "input_ids" else np.ones_like(ids)) for n in names}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    t_end = time.perf_counter() + min_seconds
    while len(times) < runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    t = np.asarray(times)
    return {"p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)), "min_ms": float(t.min()),
            "mean_ms": float(t.mean()), "runs": len(t), "threads": threads, "seq_len": seq_len}
