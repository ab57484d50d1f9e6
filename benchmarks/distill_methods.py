"""Distillation methods on Fashion-MNIST: one teacher -> one student, scratch vs each method.

Writes ``benchmarks/results/distill_methods.json``:

* ``teacher_accuracy``, ``scratch_accuracy`` (mean, std over seeds), and per method ``mean``, ``std``,
  ``gap_closed`` = (method - scratch) / (teacher - scratch), on the full 10k test set;
* ``throughput_ratio_vs_plain_loop``: samples/s of ``edgedistill.distill.train.fit`` with KD over a
  minimal hand-written PyTorch KD loop on the same models and data, interleaved A B A B;
* ``cache_speedup``: epoch time of KD with the teacher running / with the top-k soft-label cache.

Data: the Debian package ``dataset-fashion-mnist`` (IDX files read with numpy). Run:

    PYTHONPATH=$PWD nice -n 10 python benchmarks/distill_methods.py            # the full table
    PYTHONPATH=$PWD nice -n 10 python benchmarks/distill_methods.py --part speed  # throughput + cache only
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgedistill.data import ArraySplit
from edgedistill.data.fashion_mnist import MEAN, STD, read_idx
from edgedistill.distill.cache import build_cache, storage_report
from edgedistill.distill.losses import LossContext, build_loss
from edgedistill.distill.teachers import TorchTeacher
from edgedistill.distill.train import FitConfig, Term, evaluate_accuracy, fit
from edgedistill.models import build_model, count_params

FMNIST = Path("/usr/share/datasets/fashion-mnist")
RESULTS = Path(__file__).parent / "results" / "distill_methods.json"

TEACHER = {"width": 32, "depth": 3}
STUDENT = {"width": 8, "depth": 3}
S_MAP, T_MAP = "features.5", "features.5"  # both the stage-2 output, 14 x 14 (student 16 ch, teacher 64 ch)
S_VEC, T_VEC = "pool", "pool"              # penultimate (pooled) features: student 32, teacher 128

# method -> extra terms added to the student's loss (every method keeps a hard-label term, as the papers do)
METHODS: dict[str, list[tuple[str, float, dict]]] = {
    "kd": [("kd", 1.0, {})],
    "dkd": [("dkd", 1.0, {})],
    "hint": [("ce", 1.0, {}), ("hint", 1.0, {"student_layer": S_MAP, "teacher_layer": T_MAP})],
    "hidden_cosine": [("ce", 1.0, {}), ("hidden", 1.0, {"student_layer": S_MAP, "teacher_layer": T_MAP})],
    "at": [("ce", 1.0, {}), ("at", 50.0, {"student_layer": S_MAP, "teacher_layer": T_MAP})],
    "pkt": [("ce", 1.0, {}), ("pkt", 1.0, {"student_layer": S_VEC, "teacher_layer": T_VEC})],
    "nst": [("ce", 1.0, {}), ("nst", 10.0, {"student_layer": S_MAP, "teacher_layer": T_MAP})],
    "rkd": [("ce", 1.0, {}), ("rkd", 25.0, {"student_layer": S_VEC, "teacher_layer": T_VEC})],
    "sp": [("ce", 1.0, {}), ("sp", 3000.0, {"student_layer": S_MAP, "teacher_layer": T_MAP})],
    "simmat": [("ce", 1.0, {}), ("simmat", 10.0, {"student_layer": S_VEC, "teacher_layer": T_VEC})],
    "crd": [("ce", 1.0, {}), ("crd", 0.8, {"student_layer": S_VEC, "teacher_layer": T_VEC, "queue_size": 4096})],
    "self_distill": [("ce", 1.0, {}), ("self_distill", 1.0, {"student_layer": ["features.2", "features.5"]})],
}


def _idx(name: str) -> np.ndarray:
    return read_idx(FMNIST / name)


def load_fmnist(n_train: int) -> tuple[ArraySplit, ArraySplit]:
    """A fixed random ``n_train`` subset of the 60k training images, and the full 10k test set."""
    if not (FMNIST / "train-images-idx3-ubyte.gz").exists():
        sys.exit(f"{FMNIST}: Fashion-MNIST not found; apt-get install dataset-fashion-mnist")
    def prep(x):
        return ((x.astype(np.float32) / 255.0 - MEAN) / STD)[:, None]
    x, y = _idx("train-images-idx3-ubyte.gz"), _idx("train-labels-idx1-ubyte.gz").astype(np.int64)
    keep = np.random.default_rng(0).permutation(len(x))[:n_train]
    xt, yt = _idx("t10k-images-idx3-ubyte.gz"), _idx("t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return ArraySplit(prep(x[keep]), y[keep]), ArraySplit(prep(xt), yt)


def _model(spec: dict, seed: int):
    torch.manual_seed(seed)
    return build_model("cnn", spec, (1, 28, 28), 10, "bench")


def _terms(spec: list[tuple[str, float, dict]], ctx: LossContext) -> list[Term]:
    return [Term(f"{n}{i}", build_loss(n, dict(p), ctx, f"bench.{n}"), w) for i, (n, w, p) in enumerate(spec)]


def train_student(method_terms, teacher, train, test, args, seed: int, cache=None) -> float:
    student = _model(STUDENT, seed)
    ctx = LossContext(alpha=args.alpha, temperature=args.temperature, num_classes=10, batch_size=args.batch_size)
    cfg = FitConfig(epochs=args.epochs, lr=args.lr, weight_decay=1e-4, batch_size=args.batch_size, seed=seed,
                    device="cpu", desc="student")
    with tempfile.TemporaryDirectory() as d:
        fit(student, train, cfg, _terms(method_terms, ctx), d, teacher=teacher, teacher_cache=cache)
    return evaluate_accuracy(student, test, 1000)


def _summary(accs: list[float]) -> dict:
    return {"mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "runs": accs}


def _plain_kd_loop(student, teacher, train, args, seed: int) -> float:
    """A minimal hand-written KD loop (the reference for throughput): seconds for ``args.speed_epochs`` epochs."""
    torch.manual_seed(seed)
    x_all, y_all = torch.from_numpy(train.x), torch.from_numpy(train.y)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=1e-4)
    T, a = args.temperature, args.alpha
    teacher.eval()
    student.train()
    t0 = time.perf_counter()
    for _ in range(args.speed_epochs):
        order = torch.randperm(len(x_all))
        for i in range(0, len(x_all), args.batch_size):
            idx = order[i:i + args.batch_size]
            xb, yb = x_all[idx], y_all[idx]
            with torch.no_grad():
                t = teacher(xb)
            s = student(xb)
            soft = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean", log_target=True)
            loss = a * F.cross_entropy(s, yb) + (1 - a) * T * T * soft
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def _fit_seconds(teacher, train, args, seed: int, cache=None) -> float:
    student = _model(STUDENT, seed)
    ctx = LossContext(alpha=args.alpha, temperature=args.temperature, num_classes=10)
    cfg = FitConfig(epochs=args.speed_epochs, lr=args.lr, weight_decay=1e-4, batch_size=args.batch_size,
                    seed=seed, device="cpu", desc="speed")
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        fit(student, train, cfg, _terms([("kd", 1.0, {})], ctx), d, teacher=teacher, teacher_cache=cache)
        return time.perf_counter() - t0


def speed(teacher, train, args) -> dict:
    """Interleaved A B A B: fit() vs the plain loop, then fit() with the teacher vs with the cache."""
    n = len(train) * args.speed_epochs
    plain, ours = [], []
    for r in range(args.speed_rounds):
        plain.append(n / _plain_kd_loop(_model(STUDENT, r), teacher, train, args, r))
        ours.append(n / _fit_seconds(teacher, train, args, r))
    t0 = time.perf_counter()
    cache = build_cache(TorchTeacher(teacher), train.x, key="bench", temperature=args.temperature, k=args.cache_k,
                        batch_size=1000)
    build_s = time.perf_counter() - t0
    live, cached = [], []
    for r in range(args.speed_rounds):
        live.append(_fit_seconds(teacher, train, args, r))
        cached.append(_fit_seconds(None, train, args, r, cache=cache))
    return {
        "plain_loop_samples_per_s": _summary(plain), "fit_samples_per_s": _summary(ours),
        "throughput_ratio_vs_plain_loop": statistics.median(o / p for o, p in zip(ours, plain)),
        "kd_with_teacher_s": _summary(live), "kd_with_cache_s": _summary(cached),
        "cache_build_s": build_s,
        "cache_speedup": statistics.median(lv / c for lv, c in zip(live, cached)),
        "cache_storage_this_run": {**cache.report(), "measured_bytes": cache.nbytes},
        "cache_storage_1000_classes_k50": storage_report(len(train), 1000, 50),
        "speed_epochs": args.speed_epochs, "speed_rounds": args.speed_rounds,
    }


def cpu_info() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), "?")
        vnni = "avx512_vnni" in out
    except (OSError, subprocess.CalledProcessError):
        model, vnni = platform.processor() or "?", False
    return f"{model} ({platform.machine()}, avx512_vnni={'yes' if vnni else 'no'}), torch threads={torch.get_num_threads()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["all", "accuracy", "speed", "table"], default="all",
                    help="table: print the markdown table of an existing results file and exit")
    ap.add_argument("--methods", default=",".join(m for m in METHODS if m != "hidden_cosine"), help="comma-separated subset of the methods")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-samples", type=int, default=6000)
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--speed-epochs", type=int, default=2)
    ap.add_argument("--speed-rounds", type=int, default=3)
    ap.add_argument("--cache-k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--teacher-dir", default=".cache", help="where the trained teacher is kept between runs")
    ap.add_argument("--student-width", type=int, default=STUDENT["width"], help="the cnn student's width")
    ap.add_argument("--teacher-dropout", type=float, default=0.0, help="dropout before the teacher's classifier")
    args = ap.parse_args()
    STUDENT["width"] = args.student_width
    if args.teacher_dropout:
        TEACHER["dropout"] = args.teacher_dropout
    torch.set_num_threads(args.threads)
    out_path = Path(args.out)
    if args.part == "table":
        print(markdown_table(json.loads(out_path.read_text())))
        return
    result = json.loads(out_path.read_text()) if out_path.exists() and args.part != "all" else {}

    train, test = load_fmnist(args.train_samples)
    teacher = _model(TEACHER, 0)
    t0 = time.perf_counter()
    # The trained teacher is kept (outside git) so the accuracy and speed parts share one teacher.
    saved = Path(args.teacher_dir) / (f"fmnist_teacher_{args.train_samples}_{args.teacher_epochs}_{args.lr}_{args.batch_size}"
                                      + (f"_do{args.teacher_dropout}" if args.teacher_dropout else "") + ".pt")
    if saved.exists():
        teacher.load_state_dict(torch.load(saved, weights_only=True))
    else:
        with tempfile.TemporaryDirectory() as d:
            fit(teacher, train, FitConfig(epochs=args.teacher_epochs, lr=args.lr, weight_decay=1e-4,
                                          batch_size=args.batch_size, seed=0, device="cpu", desc="teacher"),
                _terms([("ce", 1.0, {})], LossContext()), d)
        saved.parent.mkdir(parents=True, exist_ok=True)
        torch.save(teacher.state_dict(), saved)
    teacher.eval()
    teacher_acc = evaluate_accuracy(teacher, test, 1000)
    print(f"teacher {teacher_acc:.4f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    result.update({
        "cpu": cpu_info(), "torch": torch.__version__, "dataset": "Fashion-MNIST",
        "setup": {"train_samples": len(train), "test_samples": len(test), "teacher": {"arch": "cnn", **TEACHER,
                  "parameters": count_params(teacher), "epochs": args.teacher_epochs},
                  "student": {"arch": "cnn", **STUDENT, "parameters": count_params(_model(STUDENT, 0)),
                              "epochs": args.epochs},
                  "batch_size": args.batch_size, "lr": args.lr, "optimizer": "adamw + cosine",
                  "alpha": args.alpha, "temperature": args.temperature, "seeds": args.seeds},
        "teacher_accuracy": teacher_acc,
    })

    if args.part in ("all", "accuracy"):
        def run(terms) -> dict:
            accs = []
            for seed in range(args.seeds):
                t1 = time.perf_counter()
                accs.append(train_student(terms, teacher, train, test, args, seed))
                print(f"  seed {seed}: {accs[-1]:.4f} ({time.perf_counter() - t1:.0f} s)", file=sys.stderr)
            return _summary(accs)

        print("scratch", file=sys.stderr)
        scratch = run([("ce", 1.0, {})])
        result["scratch_accuracy"] = scratch
        gap = teacher_acc - scratch["mean"]
        methods = {}
        chosen = [m for m in args.methods.split(",") if m]
        for m in chosen:
            print(m, file=sys.stderr)
            methods[m] = {**run(METHODS[m]), "terms": [{"name": n, "weight": w, "params": p} for n, w, p in METHODS[m]]}
            _write(out_path, {**result, "methods": methods, "partial": True})  # a cut-off run keeps what it measured
        # The best combination: the best response method plus the best feature / relation method.
        resp = max((m for m in methods if m in ("kd", "dkd")), key=lambda m: methods[m]["mean"], default=None)
        other = max((m for m in methods if m not in ("kd", "dkd", "self_distill")), key=lambda m: methods[m]["mean"], default=None)
        if resp and other:
            name = f"{resp}+{other}"
            print(name, file=sys.stderr)
            terms = METHODS[resp] + [t for t in METHODS[other] if t[0] != "ce"]
            methods[name] = {**run(terms), "terms": [{"name": n, "weight": w, "params": p} for n, w, p in terms]}
        for m in methods.values():
            m["gap_closed"] = (m["mean"] - scratch["mean"]) / gap if gap > 0 else float("nan")
        result["methods"] = methods
        result["best_method"] = max(methods, key=lambda m: methods[m]["mean"])

    if args.part in ("all", "speed"):
        print("speed", file=sys.stderr)
        sp = speed(teacher, train, args)
        result.update({"throughput_ratio_vs_plain_loop": sp.pop("throughput_ratio_vs_plain_loop"),
                       "cache_speedup": sp.pop("cache_speedup"), "speed": sp})

    result.pop("partial", None)
    _write(out_path, result)
    print(f"wrote {out_path}", file=sys.stderr)


def markdown_table(result: dict) -> str:
    """The README table, rendered from a results file (so the docs quote the measured numbers)."""
    pct = lambda m: f"{100 * m['mean']:.2f} ± {100 * m['std']:.2f}"
    rows = ["| student trained with | test accuracy % (mean ± std, 3 seeds) | gap closed |", "|---|---|---|",
            f"| teacher (reference) | {100 * result['teacher_accuracy']:.2f} | |",
            f"| scratch (CE only) | {pct(result['scratch_accuracy'])} | 0 % |"]
    for name, m in sorted(result.get("methods", {}).items(), key=lambda kv: -kv[1]["mean"]):
        gap = m.get("gap_closed")
        rows.append(f"| {name} | {pct(m)} | {'' if gap is None else f'{100 * gap:.0f} %'} |")
    return "\n".join(rows)


def _write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
