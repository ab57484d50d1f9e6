"""Latency, memory and size of models on this machine, judged against a target's budgets: ``.onnx`` files through
ONNX Runtime, ``.tflite`` files through LiteRT (:class:`edgedistill.litert.LiteRTSession`, int8 I/O converted inside
each timed call, as an app pays it).

Mirrors ``onnxruntime_perf_test`` and TFLite's ``benchmark_model``: session-creation time, first
inference, warm-up kept apart from the steady state (at least ``runs`` runs *and* ``min_seconds``),
min / mean / std / p50 / p90 / p99, throughput, peak RSS and file size.

Every model runs in its own child process (``python -m edgedistill.bench --worker``), so one
model's memory never shows up in another's peak RSS. The parent drives the children in rounds,
A B A B ..., each child timing a block of ``session.run`` calls while the others sleep on their
pipe, so a machine that drifts (thermal throttling, a neighbour's job) biases every model alike.

This module imports onnxruntime, numpy and the stdlib only -- never torch -- so a board can run
it with the light install (``pip install edgedistill``; ``ai-edge-litert`` beside it for ``.tflite`` files).
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .litert import LiteRTSession, check_tflite, is_tflite
from .onnx_inspect import check_onnx
from ._io import file_size_mb
from ._machine import cpu_count, machine_info
from .ort_session import required_config, session_options
from .errors import DataError, EdgeDistillError
from .budgets import judge, misses
from .targets import Target

_ROUNDS = 10  # nominal number of interleaved rounds; blocks are sized so each model gets ~this many
_MAX_ROUNDS = 10_000
_VOCAB_SAFE = 100  # token ids drawn from [0, 100): valid for every real vocabulary


def benchmark(paths: list[str], *, target: Target | None = None, threads: int | None = None,
              runs: int = 100, warmup: int = 10, min_seconds: float = 1.0, batch_size: int = 1,
              seq_len: int = 32, providers: list[str] | None = None, deliverable: str | None = None,
              keep_samples: bool = False, remote: str | None = None, ssh_options: list[str] = (),
              remote_python: str | None = None, gate_indicative: bool = False, ci_tolerance: float | None = 0.05,
              max_seconds: float = 10.0) -> dict:
    """Benchmark models (``.onnx`` and ``.tflite``) interleaved (A B A B ...) and return the bench output contract.

    Threads: ``threads``, else ``target.threads``, else 1. Providers: ``providers``, else the
    target's execution provider when this onnxruntime has it, else CPU. With a target, every model
    carries a per-budget ``verdict`` (:func:`edgedistill.budgets.judge`); with a ``deliverable`` too, the
    top-level ``verdict`` judges that path and ``ok`` is False when it misses a budget. Figures are measured on this
    host and never scaled: ``host_matches_target`` says whether this host is the target. Measured off the
    target, the p90 verdict is indicative and leaves ``ok`` alone (``latency_indicative``; size and RAM still
    count) unless ``gate_indicative``.

    Precision: after ``runs`` and ``min_seconds``, the rounds go on until the 95 % confidence intervals of p50 and
    p90 (``latency_ms.ci95``) are within ``ci_tolerance`` (relative half-width; 0 or None: stop at the minimum) or
    ``max_seconds`` have passed; ``ci_tight`` per model says which, ``settings.ci_note`` names those left wide.

    Remote: ``remote`` (``[USER@]HOST[:PORT]``), else ``target.remote``, runs the benchmark on that machine over
    SSH (:mod:`edgedistill.bench_remote`), with ``ssh_options`` before the target's and ``remote_python`` (else
    the target's, ``python3``); ``machine`` is then the device's and ``remote`` names it.

    Each ONNX file runs in the session config its metadata asks for (``session_config`` per model;
    :mod:`edgedistill.ort_session`): what the bundle's model card tells the app to set.
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise DataError("benchmark: no model given; pass at least one .onnx or .tflite path.")
    configs = {}  # each ONNX file in the session config it asks for (an INT8 file's: edgedistill.ort_session)
    for p in paths:  # existence, onnx.checker and the opset range (the TFLite identifier) before a worker loads it
        model = check_tflite(p) if is_tflite(p) else check_onnx(p)
        configs[p] = required_config(model) if model is not None else {}
    if runs < 1 or warmup < 0 or min_seconds < 0 or batch_size < 1 or seq_len < 1 or max_seconds < 0 \
            or (ci_tolerance or 0) < 0:
        raise DataError("benchmark: runs, batch_size and seq_len must be >= 1 and warmup, min_seconds, max_seconds, "
                        "ci_tolerance >= 0.")
    if deliverable is not None and deliverable not in paths:
        raise DataError(f"deliverable {deliverable!r} is not one of the benchmarked paths; pass one of them.")
    n_threads = threads if threads is not None else (target.threads if target is not None else 1)
    if n_threads < 1:
        raise DataError(f"threads: {n_threads} is not valid; pass 1 or more.")
    settings = {"threads": n_threads, "inter_op_threads": 1, "runs": runs, "warmup": warmup,
                "min_seconds": min_seconds, "batch_size": batch_size, "seq_len": seq_len,
                "ci_tolerance": ci_tolerance or None, "max_seconds": max_seconds}
    host = remote or (target.remote if target is not None else None)
    if host and keep_samples:
        raise DataError("benchmark: keep_samples is not available over SSH; benchmark on the device itself for them.")
    if host:
        result = _measure_remote(paths, host, settings, providers, target, ssh_options, remote_python)
    else:
        result = _measure_here(paths, settings, providers, target, keep_samples, configs)
    if target is not None:
        _judge(result, target, deliverable, gate_indicative)
    return result


def _measure_here(paths: list[str], settings: dict, providers: list[str] | None, target: Target | None,
                  keep_samples: bool, configs: dict[str, dict]) -> dict:
    import onnxruntime as ort

    provs, provider_note = _choose_providers(providers, target, ort.get_available_providers())
    settings = {**settings, "providers": provs}
    asked, cores = settings["threads"], cpu_count()
    if asked > cores:  # more threads than cores share them: the latency would be the oversubscription's
        settings.update(threads=cores, threads_requested=asked)
    workers: list[_Worker] = []
    try:
        for p in paths:
            workers.append(_Worker(p, {**settings, "session_config": configs[p]}))
        models = _measure(workers, settings, keep_samples)
    finally:
        for w in workers:
            w.close()

    result = {"machine": machine_info(), "settings": settings, "models": models, "ratios": _ratios(models)}
    if provider_note:
        result["settings"]["provider_note"] = provider_note
    wide = [m["path"] for m in models if m.get("ci_tight") is False]
    if wide:
        result["settings"]["ci_note"] = (f"the 95 % intervals of p50/p90 of {', '.join(wide)} are wider than "
                                         f"+/-{100 * settings['ci_tolerance']:g} % after the {max(settings['max_seconds'], settings['min_seconds']):g} s "
                                         "cap: those percentiles are less certain (see latency_ms.ci95).")
    if asked > cores:
        result["settings"]["threads_note"] = (f"{asked} threads asked for, capped at this host's {cores} cores: more "
                                              "threads than cores would share them and measure the oversubscription.")
    return result


def _measure_remote(paths: list[str], host: str, settings: dict, providers: list[str] | None, target: Target | None,
                    ssh_options: list[str], remote_python: str | None) -> dict:
    """The same measurement by the device's own ``edgedistill bench`` over SSH; its threads note is the device's."""
    from ._ssh import check_ssh_options, parse_remote
    from .bench_remote import RemoteBench

    options = check_ssh_options(list(ssh_options), "--ssh-option") + (target.ssh_options if target else [])
    python = remote_python or (target.remote_python if target is not None else "python3")
    with RemoteBench(parse_remote(host), options, python) as rb:
        provs, provider_note = _choose_providers(providers, target, rb.available_providers, f"{rb.remote}'s")
        result = rb.run(paths, {**settings, "providers": provs})
    if "note" in rb.facts:  # set on leaving: the temporary folder could not be removed
        result["remote"]["note"] = rb.facts["note"]
    if provider_note:
        result["settings"]["provider_note"] = provider_note
    return result


def latency_stats(ms: list[float]) -> dict:
    """min / mean / std / p50 / p90 / p99 of latencies in ms (percentiles by linear interpolation), and ``ci95``:
    a 95 % confidence interval ``[low, high]`` of p50 and p90 from order statistics (distribution-free: the ranks
    n*q -/+ 1.96*sqrt(n*q*(1-q)) of the sorted samples; it takes the samples as independent)."""
    import numpy as np

    a = np.sort(np.asarray(ms, dtype=np.float64))
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    ci = {}
    for name, q in (("p50", 0.5), ("p90", 0.9)):
        half = 1.96 * math.sqrt(a.size * q * (1 - q))
        lo, hi = max(math.floor(a.size * q - half), 1), min(math.ceil(a.size * q + half), a.size)  # 1-based ranks
        ci[name] = [float(a[lo - 1]), float(a[hi - 1])]
    return {"min": float(a[0]), "mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(a[-1]), "ci95": ci}


# --- the parent side -------------------------------------------------------------------------------

def _choose_providers(providers: list[str] | None, target: Target | None, available: list[str],
                      whose: str = "this") -> tuple[list[str], str]:
    """The providers to run with, from those ``available`` in the measuring host's onnxruntime (``whose``)."""
    if providers:
        missing = [p for p in providers if p not in available]
        if missing:
            raise DataError(f"providers: {missing[0]} is not in {whose} onnxruntime build; choose from {', '.join(available)}.")
        return list(providers), ""
    if target is not None and target.execution_provider != "CPUExecutionProvider":
        if target.execution_provider in available:
            return [target.execution_provider, "CPUExecutionProvider"], ""
        return ["CPUExecutionProvider"], (f"target prefers {target.execution_provider}, which {whose} onnxruntime "
                                          "build lacks; measured on CPUExecutionProvider.")
    return ["CPUExecutionProvider"], ""


class _Worker:
    """One child process holding one model's session; JSON lines over its stdin/stdout."""

    def __init__(self, path: str, settings: dict):
        self.path = path
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty child can never block on it
        self.proc = subprocess.Popen([sys.executable, "-m", "edgedistill.bench", "--worker"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, bufsize=1,
                                     start_new_session=True)  # a terminal's Ctrl-C is for the parent to handle
        try:
            self.init = self.ask({"cmd": "init", "path": path, **settings})
        except BaseException:
            self.close()
            raise

    def ask(self, msg: dict) -> dict:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.proc.wait(timeout=10)
            self.log.seek(0)
            err = self.log.read().strip().splitlines()
            raise EdgeDistillError(f"{self.path}: the benchmark worker died ({err[-1] if err else 'no message'}); "
                                   "check that the model runs with onnxruntime.")
        reply = json.loads(line)
        if "error" in reply:
            raise DataError(f"{self.path}: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


def _measure(workers: list[_Worker], s: dict, keep_samples: bool = False) -> list[dict]:
    # warm-up, one model after the other; its times estimate how many runs fill one block
    estimates = []
    for w in workers:
        reply = w.ask({"cmd": "warmup", "n": s["warmup"]})
        est = reply["mean_ms"] if reply["mean_ms"] is not None else w.init["first_inference_ms"]
        estimates.append(max(est, 1e-3))
    blocks = [max(math.ceil(s["runs"] / _ROUNDS), math.ceil(s["min_seconds"] * 1000 / _ROUNDS / est), 1)
              for est in estimates]
    times = _rounds(workers, blocks, estimates, s)
    models = []
    for w, t in zip(workers, times):
        end = w.ask({"cmd": "stop"})
        stats = latency_stats(t)
        tol = s.get("ci_tolerance")
        models.append({
            "path": w.path,
            "size_mb": round(file_size_mb(w.path), 4),
            "session_create_ms": w.init["session_create_ms"],
            "first_inference_ms": w.init["first_inference_ms"],
            "warmup_runs": s["warmup"],
            "runs": len(t),
            "steady_seconds": sum(t) / 1000,
            "latency_ms": stats,
            "throughput_per_s": s["batch_size"] * 1000.0 / stats["mean"] if stats["mean"] > 0 else None,
            "peak_rss_mb": end["peak_rss_mb"],
            "rss_before_session_mb": w.init["rss_before_session_mb"],
            "execution_provider": w.init["provider"],
            "session_config": w.init["session_config"],
            "int8_io_ms": w.init.get("int8_io_ms"),
            "inputs": w.init["inputs"],
        })
        if tol is not None:
            models[-1]["ci_tight"] = _ci_tight(stats, tol)
        if keep_samples:
            models[-1]["samples_ms"] = t
    return models


def _rounds(workers: list[_Worker], blocks: list[int], estimates: list[float], s: dict) -> list[list[float]]:
    """A B A B ... until every model has >= runs samples and >= min_seconds; then, with ``ci_tolerance``, on
    until the 95 % intervals of p50 and p90 are within it (relative half-width) or ``max_seconds`` have passed
    since timing began. Blocks double while extending (an interval narrows as 1/sqrt(n)), up to ~1 s each."""
    times: list[list[float]] = [[] for _ in workers]
    tol, cap, start = s.get("ci_tolerance"), s.get("max_seconds", 0.0), time.monotonic()
    for _ in range(_MAX_ROUNDS):
        for w, n, t in zip(workers, blocks, times):
            t.extend(w.ask({"cmd": "run", "n": n})["ms"])
        if not all(len(t) >= s["runs"] and sum(t) >= s["min_seconds"] * 1000 for t in times):
            continue
        if tol is None or time.monotonic() - start >= cap or all(_ci_tight(latency_stats(t), tol) for t in times):
            break
        blocks = [min(2 * b, max(b, int(1000 / est))) for b, est in zip(blocks, estimates)]
    return times


def _ci_tight(stats: dict, tol: float) -> bool:
    """Both 95 % intervals (p50, p90) within ``tol`` of their figure: half their width <= tol x the percentile."""
    return all((hi - lo) / 2 <= tol * stats[q] for q, (lo, hi) in stats["ci95"].items())


def _ratios(models: list[dict]) -> list[dict]:
    """Each model against the first one: model / baseline (below 1 means smaller or faster)."""
    if len(models) < 2:
        return []
    base = models[0]
    out = []
    for m in models[1:]:
        r = {"model": m["path"], "baseline": base["path"]}
        for key, a, b in (("latency_mean", m["latency_ms"]["mean"], base["latency_ms"]["mean"]),
                          ("latency_p90", m["latency_ms"]["p90"], base["latency_ms"]["p90"]),
                          ("size_mb", m["size_mb"], base["size_mb"]),
                          ("peak_rss_mb", m["peak_rss_mb"], base["peak_rss_mb"])):
            r[key] = round(a / b, 4) if a is not None and b else None
        r["speedup_p90"] = round(1 / r["latency_p90"], 4) if r["latency_p90"] else None
        out.append(r)
    return out


def _judge(result: dict, target: Target, deliverable: str | None, gate_indicative: bool = False) -> None:
    """Each model's verdict against ``target`` (:func:`edgedistill.budgets.judge`); the top-level ``verdict`` and
    ``ok`` judge ``deliverable`` when one is named. Latency gates only when measured on the target: a host of
    its architecture and core count, or a ``--remote`` of its architecture (the user named the device); off the
    target the p90 verdict is indicative (``latency_indicative``) unless ``gate_indicative``."""
    host_arch, host_cores = result["machine"]["architecture"], result["machine"]["cores"]
    matches = host_arch == target.architecture and host_cores == target.cores
    on_target = matches or ("remote" in result and host_arch == target.architecture)
    indicative = not on_target and not gate_indicative
    for m in result["models"]:
        m["verdict"] = judge(m, target.budgets, latency_indicative=indicative)
    result["target"] = target.to_dict()
    result["measured_on_target"], result["latency_indicative"] = on_target, indicative
    if deliverable is not None:
        judged = next(m for m in result["models"] if m["path"] == deliverable)
        result["deliverable"] = deliverable
        result["verdict"] = judged["verdict"]
        result["ok"] = not misses(judged["verdict"])
    where = f"the remote {result['remote']['host']}" if "remote" in result else "this host"
    result["host_matches_target"] = matches
    result["host_note"] = ("measured on the target's architecture and core count." if matches else
                           f"{where} is {host_arch} with {host_cores} cores, not the target {target.name} "
                           f"({target.architecture}, {target.cores} cores): the figures are {where}'s, "
                           "unscaled; run `edgedistill bench` on the device itself (or with --remote) for its numbers"
                           + ("; the p90 verdict is indicative and does not gate (size and RAM do)." if indicative
                              else "."))


# --- the child side --------------------------------------------------------------------------------

_NP_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def random_inputs(session, batch_size: int = 1, seq_len: int = 32, seed: int = 0) -> dict:
    """Feeds for ``session`` from its input signature: the first dynamic dim is ``batch_size``, other
    dynamic dims ``seq_len``; integer inputs are token ids in a small valid range, masks all ones."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (batch_size if i == 0 else seq_len)
                 for i, d in enumerate(inp.shape)]
        dtype = _NP_DTYPES.get(inp.type)
        if dtype is None:
            raise DataError(f"input {inp.name!r} has type {inp.type}, which the benchmark cannot generate; "
                            "use a model with float, integer or bool inputs.")
        name = inp.name.lower()
        if dtype == "bool" or "mask" in name:
            arr = np.ones(shape, dtype=dtype)
        elif dtype.startswith("float"):
            arr = rng.standard_normal(shape).astype(dtype)
        elif "type" in name or "segment" in name or "position" in name:
            arr = np.zeros(shape, dtype=dtype)
        else:
            arr = rng.integers(0, _VOCAB_SAFE, size=shape).astype(dtype)
        feeds[inp.name] = arr
    return feeds


def _proc_status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _rss_mb() -> float | None:
    return _proc_status_mb("VmRSS")


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory. On Linux VmHWM, not ru_maxrss: ru_maxrss survives
    fork + exec and would report the parent's memory at the time it started this worker."""
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def _session_config(sess, asked: dict) -> dict:
    """The session config entries ``asked`` for, as the created ONNX Runtime session holds them."""
    if not hasattr(sess, "get_session_options"):  # a LiteRT interpreter
        return {}
    opts = sess.get_session_options()
    return {k: opts.get_session_config_entry(k) for k in asked}


def _worker_main() -> None:
    import numpy as np
    import onnxruntime as ort

    out = sys.stdout
    sys.stdout = sys.stderr  # anything a library prints must not corrupt the protocol
    sess = feeds = None

    def reply(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        if cmd == "init":
            rss0 = _rss_mb()
            so = session_options(msg["threads"], config=msg.get("session_config"))
            so.inter_op_num_threads = msg["inter_op_threads"]
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            try:
                t0 = time.perf_counter()
                sess = LiteRTSession(msg["path"], msg["threads"]) if is_tflite(msg["path"]) else \
                    ort.InferenceSession(msg["path"], sess_options=so, providers=msg["providers"])
                create_ms = (time.perf_counter() - t0) * 1000
                feeds = random_inputs(sess, msg["batch_size"], msg["seq_len"])
            except EdgeDistillError as e:
                reply({"error": str(e)})
                return
            except Exception as e:  # onnxruntime raises its own types for unreadable models
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                reply({"error": f"onnxruntime cannot load it ({first[:300]}); check that it is a valid ONNX model."})
                return
            t0 = time.perf_counter()
            sess.run(None, feeds)
            first_ms = (time.perf_counter() - t0) * 1000
            reply({"session_create_ms": create_ms, "first_inference_ms": first_ms, "rss_before_session_mb": rss0,
                   "session_config": _session_config(sess, msg.get("session_config") or {}),
                   "provider": sess.get_providers()[0], "int8_io_ms": _int8_io_ms(sess, feeds),
                   "inputs": [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feeds.items()]})
        elif cmd in ("warmup", "run"):
            ms = _timed_runs(sess, feeds, msg["n"])
            if cmd == "warmup":
                reply({"mean_ms": float(np.mean(ms)) if ms else None})
            else:
                reply({"ms": ms})
        elif cmd == "stop":
            reply({"peak_rss_mb": _peak_rss_mb()})
            return


def _int8_io_ms(sess, feeds: dict, n: int = 200) -> float | None:
    """For a ``.tflite`` model with int8 inputs or outputs: the median time of the quantize / dequantize that each
    timed call includes (done in numpy here, as an app's code would do it), so a reader can see its share."""
    if not getattr(sess, "int8_io", False):
        return None
    ms = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        sess.convert_io(feeds)
        ms.append((time.perf_counter_ns() - t0) / 1e6)
    return sorted(ms)[n // 2]


def _timed_runs(sess, feeds: dict, n: int) -> list[float]:
    """Latencies in ms of ``n`` calls of ``sess.run``: call i lasted ts[i+1] - ts[i]."""
    ts = _timed_loop(sess, feeds, n)
    return [(ts[i + 1] - ts[i]) / 1e6 for i in range(n)]


def _timed_loop(sess, feeds: dict, n: int) -> list[int]:
    """The timed region: one clock read before every call and one after the last (ns). One read per
    call (not two) halves the harness's own cost; what it adds besides (the loop step, one list
    store) a bare ``for`` loop pays as well. GC is off so a collection never lands inside a call."""
    run, clock = sess.run, time.perf_counter_ns
    ts = [0] * (n + 1)
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        for i in range(n):
            ts[i] = clock()
            run(None, feeds)
        ts[n] = clock()
    finally:
        if gc_was_on:
            gc.enable()
    return ts


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker_main()
