"""Distillation methods on Fashion-MNIST: one teacher -> one student, scratch vs each method.

Writes ``benchmarks/results/distill_methods.json``:

* ``teacher_accuracy``, ``scratch_accuracy`` (mean, std over seeds), and per method ``mean``, ``std``,
  ``gap_closed`` = (method - scratch) / (teacher - scratch), on the full 10k test set; every run's
  accuracy on a validation split held out of the training images is kept too (``val_runs``), and the
  best combination's second term is chosen on validation, never on test;
* ``throughput_ratio_vs_plain_loop``: samples/s of ``edgedistill.distill.train.fit`` with KD over a
  minimal hand-written PyTorch KD loop on the same models and data, interleaved A B A B;
* ``cache_speedup``: epoch time of KD with the teacher running / with the top-k soft-label cache.

The default setup follows the distillation literature's recipe (CRD's benchmark: T = 4, 0.1 CE +
0.9 KD, teacher and student reading the same augmented view, a long schedule): a ResNet teacher
(0.70 M parameters) and a 6 k-parameter CNN student, both trained on 55 k images with random
shifts and flips. Training runs are independent, so ``--workers`` runs several at once (``--device
cuda`` for a GPU); the speed part always runs on the CPU at 1 thread.

Data: the Debian package ``dataset-fashion-mnist`` (IDX files read with numpy). Run:

    PYTHONPATH=$PWD python benchmarks/distill_methods.py --device cuda --workers 13 --student '{"width": 32}'  # the table
    PYTHONPATH=$PWD python benchmarks/distill_methods.py --part speed                # throughput + cache
    PYTHONPATH=$PWD python benchmarks/distill_methods.py --part table                # print the README table

``--labelled N`` measures the unlabelled-data scenario instead: only N training images keep their
labels, the distilled student reads the teacher's soft labels on all of them, and scratch trains on
the N labelled images alone (``benchmarks/results/distill_unlabelled.json``).

``--student-arch mlp`` trains an MLP student (the registry's ``mlp``, hidden layers 128 and 64 unless
``--student`` says otherwise); it has no feature maps, so ``at`` and ``nst`` are left out and ``hint``
and ``sp`` read its last hidden vector (``benchmarks/results/distill_methods_mlp.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._provenance import stamp  # noqa: E402
from edgedistill._machine import machine_info  # noqa: E402
from edgedistill.data import ArraySplit  # noqa: E402
from edgedistill.data.fashion_mnist import MEAN, STD, read_idx  # noqa: E402
from edgedistill.distill.cache import SoftLabelCache, build_cache, storage_report  # noqa: E402
from edgedistill.distill.losses import LossContext, build_loss  # noqa: E402
from edgedistill.distill.teachers import TorchTeacher  # noqa: E402
from edgedistill.distill.train import FitConfig, Term, evaluate_accuracy, fit  # noqa: E402
from edgedistill.errors import ConfigError  # noqa: E402
from edgedistill.models import build_model, count_params  # noqa: E402

FMNIST = Path(os.environ.get("FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
RESULTS = Path(__file__).parent / "results" / "distill_methods.json"

# (arch, params); taps per arch: the 14 x 14 stage output, and the pooled penultimate vector
TEACHER = ("resnet", {"width": 32, "depth": 3})
STUDENT_DEFAULTS = {"cnn": {"width": 8, "depth": 3}, "mlp": {"hidden": [128, 64]}}
STUDENT = ("cnn", dict(STUDENT_DEFAULTS["cnn"]))
# An mlp has no maps: hint and sp read its last hidden vector, at and nst (maps only) are left out.
TAPS = {"cnn": ("features.5", "pool"), "resnet": ("stages.1", "pool"), "mobilenet": ("features.1", "pool"),
        "mlp": (None, "body.3")}
SHALLOW = {"cnn": ["features.2", "features.5"], "mlp": ["body.1"]}  # self_distill's auxiliary heads


def set_student(arch: str, params_json: str) -> None:
    """The student the runs train: ``arch``'s defaults updated by ``--student`` (in the parent and each worker)."""
    global STUDENT
    STUDENT = (arch, {**STUDENT_DEFAULTS[arch], **json.loads(params_json)})


def check_student_args(args: argparse.Namespace) -> None:
    """Set the student from ``--student-arch`` / ``--student`` and check them and ``--methods`` before the
    teacher is loaded or trained: a bad value exits with one line."""
    try:
        set_student(args.student_arch, args.student)
    except json.JSONDecodeError as e:
        sys.exit(f"--student: {args.student!r} is not JSON ({e.msg}); pass an object, e.g. '{{\"width\": 32}}'.")
    try:
        _model(STUDENT, 0)
    except ConfigError as e:
        sys.exit(f"--student: {e}")
    table = methods(STUDENT[0], TEACHER[0])
    if unknown := [m for m in (args.methods or "").split(",") if m and m not in table]:
        sys.exit(f"--methods: {', '.join(unknown)} not available for a {STUDENT[0]} student; choose from {', '.join(table)}.")


def methods(student_arch: str, teacher_arch: str) -> dict[str, list[tuple[str, float, dict]]]:
    """method -> its loss terms. Feature and relation methods keep the hard-label term, as their papers do."""
    (s_map, s_vec), (t_map, t_vec) = TAPS[student_arch], TAPS[teacher_arch]
    fvec = {"student_layer": s_vec, "teacher_layer": t_vec}
    fmap = {"student_layer": s_map, "teacher_layer": t_map} if s_map else fvec
    ce = ("ce", 1.0, {})
    table = {
        "kd": [("kd", 1.0, {})],
        "dkd": [("dkd", 1.0, {"alpha": 0.5})],  # CE + TCKD + 8 NCKD, the paper's ratio
        "hint": [ce, ("hint", 1.0, fmap)],
        "at": [ce, ("at", 50.0, fmap)],
        "pkt": [ce, ("pkt", 1.0, fvec)],
        "nst": [ce, ("nst", 10.0, fmap)],
        "rkd": [ce, ("rkd", 25.0, fvec)],
        "sp": [ce, ("sp", 3000.0, fmap)],
        "simmat": [ce, ("simmat", 10.0, fvec)],
        "crd": [ce, ("crd", 0.8, {**fvec, "queue_size": 4096})],
        "self_distill": [ce, ("self_distill", 1.0, {"student_layer": SHALLOW[student_arch]})],
    }
    return {m: t for m, t in table.items() if s_map or m not in ("at", "nst")}


def load_fmnist(n_train: int, n_val: int) -> tuple[ArraySplit, ArraySplit, ArraySplit]:
    """``n_train`` training images and ``n_val`` validation images drawn (fixed seed, disjoint) from the
    60 k training set, and the full 10 k test set."""
    if not (FMNIST / "train-images-idx3-ubyte.gz").exists():
        sys.exit(f"{FMNIST}: Fashion-MNIST not found; apt-get install dataset-fashion-mnist (or set FMNIST_DIR).")

    def prep(x):
        return np.ascontiguousarray(((x.astype(np.float32) / 255.0 - MEAN) / STD)[:, None])

    x, y = read_idx(FMNIST / "train-images-idx3-ubyte.gz"), read_idx(FMNIST / "train-labels-idx1-ubyte.gz").astype(np.int64)
    if n_train + n_val > len(x):
        sys.exit(f"--train-samples + --val-samples must be <= {len(x)}.")
    order = np.random.default_rng(0).permutation(len(x))
    tr, va = order[:n_train], order[len(x) - n_val:]
    xt = read_idx(FMNIST / "t10k-images-idx3-ubyte.gz")
    yt = read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return ArraySplit(prep(x[tr]), y[tr]), ArraySplit(prep(x[va]), y[va]), ArraySplit(prep(xt), yt)


def _model(spec: tuple[str, dict], seed: int):
    torch.manual_seed(seed)
    return build_model(spec[0], spec[1], (1, 28, 28), 10, "bench")


def _terms(spec: list[tuple[str, float, dict]], ctx: LossContext) -> list[Term]:
    return [Term(f"{n}{i}", build_loss(n, dict(p), ctx, f"bench.{n}"), w) for i, (n, w, p) in enumerate(spec)]


def _fit_cfg(args, epochs: int, seed: int, desc: str) -> FitConfig:
    return FitConfig(epochs=epochs, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
                     seed=seed, device=args.device, augment=args.augment, desc=desc)


# ---------------------------------------------------------------- one training run (a worker process)

_DATA: dict = {}


def _worker_init(data_path: str, teacher_path: str | None, args: argparse.Namespace, cache_path: str | None = None) -> None:
    torch.set_num_threads(1)
    set_student(args.student_arch, args.student)  # a spawned worker starts from the module's defaults
    with np.load(data_path) as f:
        _DATA["splits"] = {k: ArraySplit(f[f"{k}_x"], f[f"{k}_y"]) for k in ("train", "val", "test")}
    _DATA["args"] = args
    if teacher_path:
        teacher = _model(TEACHER, 0)
        teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
        _DATA["teacher"] = teacher.eval()
    if cache_path:  # the teacher's soft labels, computed once in the parent: the teacher does not run here
        _DATA["cache"] = SoftLabelCache.load(cache_path)


def _run_student(job: tuple[str, list, int]) -> dict:
    name, terms, seed = job
    args, s = _DATA["args"], _DATA["splits"]
    student = _model(STUDENT, seed)
    ctx = LossContext(alpha=args.alpha, temperature=args.temperature, num_classes=10, batch_size=args.batch_size)
    train, epochs, cache, built = s["train"], args.epochs, _DATA.get("cache"), _terms(terms, ctx)
    if args.labelled and not any(t.loss.needs_teacher for t in built):
        # Trained alone, a student has only the labelled images: it trains on them for as many optimizer
        # steps as a distilled student takes over all the images.
        epochs = round(args.epochs * len(train) / args.labelled)
        train = ArraySplit(train.x[:args.labelled], train.y[:args.labelled])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        res = fit(student, train, _fit_cfg(args, epochs, seed, name), built, d,
                  teacher=None if cache is not None else _DATA.get("teacher"), teacher_cache=cache)
    dev = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    student.to(dev)
    out = {"method": name, "seed": seed, "parameters": count_params(student), "val": evaluate_accuracy(student, s["val"], 1000, dev),
           "test": evaluate_accuracy(student, s["test"], 1000, dev), "seconds": time.perf_counter() - t0,
           "samples_per_s": res.samples_per_s}
    print(f"  {name} seed {seed}: val {out['val']:.4f} test {out['test']:.4f} ({out['seconds']:.0f} s)",
          file=sys.stderr, flush=True)
    return out


def _summary(accs: list[float]) -> dict:
    return {"mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "runs": accs}


def _collect(results: list[dict], name: str, terms) -> dict:
    rows = sorted((r for r in results if r["method"] == name), key=lambda r: r["seed"])
    return {**_summary([r["test"] for r in rows]), "val_runs": [r["val"] for r in rows],
            "val_mean": statistics.mean(r["val"] for r in rows), "seconds": [round(r["seconds"], 1) for r in rows],
            "terms": [{"name": n, "weight": w, "params": p} for n, w, p in terms]}


def _done_runs(log: Path) -> dict:
    """Runs a cut-off invocation already finished (one JSON line each), so a second one only adds the rest."""
    if not log.exists():
        return {}
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return {(r["method"], r["seed"]): r for r in rows}


def _run_all(pool, jobs: list, done: dict, log: Path) -> list[dict]:
    todo = [j for j in jobs if (j[0], j[2]) not in done]
    futures = [pool.submit(_run_student, j) for j in todo]
    for f in as_completed(futures):
        row = f.result()
        done[(row["method"], row["seed"])] = row
        with open(log, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    return [done[(j[0], j[2])] for j in jobs]


def accuracy(args, splits, teacher_path: Path, result: dict) -> None:
    """Scratch and every method over the seeds, then the best combination (chosen on validation).

    Each finished run is appended to ``<teacher>.runs.jsonl`` (keyed by the student's setup), so a run
    cut off by a time limit is continued, not restarted, by the same command."""
    table = methods(STUDENT[0], TEACHER[0])
    chosen = ["scratch"] + [m for m in (args.methods or ",".join(table)).split(",") if m]
    specs = {"scratch": [("ce", 1.0, {})], **{m: table[m] for m in chosen[1:]}}
    key = json.dumps([STUDENT, args.epochs, args.lr, args.weight_decay, args.batch_size, args.alpha,
                      args.temperature, args.augment] + ([args.cache_k] if args.cache else [])
                     + ([{"labelled": args.labelled}] if args.labelled else []), sort_keys=True)
    log = teacher_path.with_name(teacher_path.stem + f"_{hashlib.sha256(key.encode()).hexdigest()[:10]}.runs.jsonl")
    done = _done_runs(log)
    with tempfile.TemporaryDirectory() as tmp:
        data_path = str(Path(tmp) / "data.npz")
        if args.labelled:  # the teacher labels the rest: their hard labels are hidden (-1) from every run
            y = splits["train"].y.copy()
            y[args.labelled:] = -1
            splits = {**splits, "train": ArraySplit(splits["train"].x, y)}
        np.savez(data_path, **{f"{k}_{a}": getattr(v, a) for k, v in splits.items() for a in ("x", "y")})
        cache_path = None
        if args.cache:  # output losses only (kd, dkd): the cache stores the teacher's outputs, not its features
            teacher = _model(TEACHER, 0)
            teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
            cache = build_cache(TorchTeacher(teacher.eval()), splits["train"].x, key="bench",
                                temperature=args.temperature, k=args.cache_k, batch_size=1000)
            cache_path = str(cache.save(Path(tmp) / "teacher_cache.pt"))
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=_worker_init,
                                 initargs=(data_path, str(teacher_path), args, cache_path)) as pool:
            runs = _run_all(pool, [(m, specs[m], seed) for seed in range(args.seeds) for m in chosen], done, log)
            found = {m: _collect(runs, m, specs[m]) for m in chosen}
            # The best combination: the best response method plus the best other method, both by validation.
            resp = max((m for m in found if m in ("kd", "dkd")), key=lambda m: found[m]["val_mean"], default=None)
            other = max((m for m in found if m not in ("scratch", "kd", "dkd", "self_distill")),
                        key=lambda m: found[m]["val_mean"], default=None)
            if resp and other:
                combo = f"{resp}+{other}"
                specs[combo] = specs[resp] + [t for t in specs[other] if t[0] != "ce"]
                runs = _run_all(pool, [(combo, specs[combo], seed) for seed in range(args.seeds)], done, log)
                found[combo] = _collect(runs, combo, specs[combo])
    scratch = found.pop("scratch")
    gap = result["teacher_accuracy"] - scratch["mean"]
    for m in found.values():
        m["gap_closed"] = (m["mean"] - scratch["mean"]) / gap if gap > 0 else float("nan")
    result.update({"scratch_accuracy": scratch, "methods": found,
                   "best_method": max(found, key=lambda m: found[m]["mean"], default=None),
                   "best_method_by_val": max(found, key=lambda m: found[m]["val_mean"], default=None)})


def train_teacher(args, splits, path: Path) -> float:
    teacher = _model(TEACHER, 0)
    if path.exists():
        teacher.load_state_dict(torch.load(path, weights_only=True))
    else:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            cfg = _fit_cfg(args, args.teacher_epochs, 0, "teacher")
            cfg.batch_size, cfg.augment = args.teacher_batch_size, args.teacher_augment
            fit(teacher, splits["train"], cfg,
                _terms([("ce", 1.0, {})], LossContext()), d)
        print(f"teacher trained in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(teacher.state_dict(), path)
    teacher.eval()
    return evaluate_accuracy(teacher, splits["test"], 1000)


# ---------------------------------------------------------------- loop throughput and the teacher cache (CPU)

def _plain_kd_loop(student, teacher, train, args, seed: int) -> float:
    """A minimal hand-written KD loop (the reference for throughput): seconds for ``args.speed_epochs`` epochs."""
    torch.manual_seed(seed)
    x_all, y_all = train.x, torch.from_numpy(train.y)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    T, a = args.temperature, args.alpha
    teacher.eval()
    student.train()
    t0 = time.perf_counter()
    for _ in range(args.speed_epochs):
        order = torch.randperm(len(x_all))
        for i in range(0, len(x_all), args.batch_size):
            idx = order[i:i + args.batch_size]
            # A fresh numpy array per batch, as fit's loader gathers it: how the batch is allocated moves the step's
            # own buffers in the heap, and that alone made the same steps 30-40 % slower here with a torch gather
            # (x[idx] on a tensor), page faults ruled out: fit and this loop must allocate their batches alike.
            xb, yb = torch.from_numpy(x_all[idx.numpy()]), y_all[idx]
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
    cfg = FitConfig(epochs=args.speed_epochs, lr=args.lr, weight_decay=args.weight_decay,
                    batch_size=args.batch_size, seed=seed, device="cpu", desc="speed")
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        fit(student, train, cfg, _terms([("kd", 1.0, {})], ctx), d, teacher=teacher, teacher_cache=cache)
        return time.perf_counter() - t0


def speed(teacher, train, args) -> dict:
    """Interleaved A B A B: fit() vs the plain loop, then fit() with the teacher vs with the cache
    (no augmentation: the plain loop has none, and the cache refuses it)."""
    torch.set_num_threads(1)
    train = ArraySplit(train.x[:args.speed_samples], train.y[:args.speed_samples])
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
        "speed_samples": len(train), "speed_epochs": args.speed_epochs, "speed_rounds": args.speed_rounds,
        "machine": machine_info(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["all", "accuracy", "speed", "table"], default="all",
                    help="table: print the markdown table of an existing results file and exit")
    ap.add_argument("--methods", default=None, help="comma-separated subset of the methods (default: all the "
                    f"student's; cnn: {','.join(methods('cnn', 'resnet'))})")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-samples", type=int, default=55000)
    ap.add_argument("--val-samples", type=int, default=5000)
    ap.add_argument("--teacher-epochs", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--teacher-batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--alpha", type=float, default=0.1, help="KD's hard-label weight (CRD's benchmark: 0.1 CE + 0.9 KD)")
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--no-augment", dest="augment", action="store_false", help="train the students without shifts and flips")
    ap.add_argument("--no-teacher-augment", dest="teacher_augment", action="store_false",
                    help="train the teacher without shifts and flips")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (training runs only)")
    ap.add_argument("--workers", type=int, default=1, help="training runs at once")
    ap.add_argument("--speed-samples", type=int, default=6000)
    ap.add_argument("--speed-epochs", type=int, default=2)
    ap.add_argument("--speed-rounds", type=int, default=3)
    ap.add_argument("--speed-teacher", choices=["trained", "student"], default="trained",
                    help="the speed part's teacher: the trained one, or an untrained network of the student's size "
                         "(two tiny models: the loop's per-step overhead shows)")
    ap.add_argument("--cache-k", type=int, default=5, help="top-k of the teacher cache (speed part, and --cache)")
    ap.add_argument("--cache", action="store_true", help="accuracy runs read the teacher's top-k soft labels from a "
                    "cache built once (needs --no-augment; output losses only)")
    ap.add_argument("--labelled", type=int, default=0,
                    help="keep the labels of only the first N training images (the unlabelled-data scenario): the "
                         "distilled student sees every image, the teacher labelling the rest; scratch trains on the "
                         "N labelled images for the same number of steps")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--teacher-dir", default=".cache", help="where the trained teacher is kept between runs")
    ap.add_argument("--student-arch", choices=sorted(STUDENT_DEFAULTS), default="cnn")
    ap.add_argument("--student", default="{}", help="the student's params (JSON) over the arch's defaults "
                    f"{STUDENT_DEFAULTS}")
    args = ap.parse_args()
    check_student_args(args)
    out_path = Path(args.out)
    if args.part == "table":
        print(markdown_table(json.loads(out_path.read_text())))
        return
    result = json.loads(out_path.read_text()) if out_path.exists() and args.part != "all" else {}

    train, val, test = load_fmnist(args.train_samples, args.val_samples)
    splits = {"train": train, "val": val, "test": test}
    tag = f"{TEACHER[0]}{TEACHER[1]['width']}_{len(train)}_{args.teacher_epochs}_{args.lr}_{args.teacher_batch_size}_aug{int(args.teacher_augment)}"
    teacher_path = Path(args.teacher_dir) / f"fmnist_teacher_{tag}.pt"
    teacher_acc = train_teacher(args, splits, teacher_path)
    print(f"teacher {teacher_acc:.4f}", file=sys.stderr)
    teacher, student = _model(TEACHER, 0), _model(STUDENT, 0)
    setup = {
        "torch": torch.__version__, "dataset": "Fashion-MNIST",
        "setup": {"train_samples": len(train), "val_samples": len(val), "test_samples": len(test),
                  "teacher": {"arch": TEACHER[0], **TEACHER[1], "parameters": count_params(teacher),
                              "epochs": args.teacher_epochs},
                  "student": {"arch": STUDENT[0], **STUDENT[1], "parameters": count_params(student),
                              "epochs": args.epochs},
                  "batch_size": args.batch_size, "teacher_batch_size": args.teacher_batch_size,
                  "teacher_augment": args.teacher_augment, "lr": args.lr, "weight_decay": args.weight_decay,
                  "optimizer": "adamw + cosine", "augment": "random 2-px shifts + horizontal flips, one view for both"
                  if args.augment else "none", "alpha": args.alpha, "temperature": args.temperature,
                  "seeds": args.seeds, "training_device": args.device,
                  "teacher_cache": f"top-{args.cache_k}" if args.cache else "none",
                  "labelled_samples": args.labelled or len(train),
                  "scratch_epochs": round(args.epochs * len(train) / args.labelled) if args.labelled else args.epochs},
        "teacher_accuracy": teacher_acc,
    }
    # The accuracy runs (on whatever device) own the setup; a later speed-only run adds its own machine.
    if args.part != "speed" or "setup" not in result:
        result.update({**setup, "accuracy_runs_cpu": machine_info().get("cpu", "?")})
    if args.part in ("all", "accuracy"):
        if args.device.startswith("cuda"):
            result["setup"]["gpu"] = torch.cuda.get_device_name(0)
        accuracy(args, splits, teacher_path, result)
    if args.part in ("all", "speed"):
        print("speed", file=sys.stderr)
        teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
        sp = speed(teacher.eval() if args.speed_teacher == "trained" else _model(STUDENT, 0).eval(), train, args)
        sp["speed_teacher"] = args.speed_teacher
        result.update({"cpu": sp["machine"]["cpu"], "throughput_ratio_vs_plain_loop": sp.pop("throughput_ratio_vs_plain_loop"),
                       "cache_speedup": sp.pop("cache_speedup"), "speed": sp})
    _write(out_path, result)
    print(f"wrote {out_path}", file=sys.stderr)


def markdown_table(result: dict) -> str:
    """The README table, rendered from a results file (so the docs quote the measured numbers)."""
    def pct(m):
        return f"{100 * m['mean']:.2f} ± {100 * m['std']:.2f}"

    n = result["setup"]["seeds"]
    rows = [f"| student trained with | test accuracy % (mean ± std, {n} seeds) | gap closed |", "|---|---|---|",
            f"| teacher (reference) | {100 * result['teacher_accuracy']:.2f} | |",
            f"| scratch (CE only) | {pct(result['scratch_accuracy'])} | 0 % |"]
    for name, m in sorted(result.get("methods", {}).items(), key=lambda kv: -kv[1]["mean"]):
        rows.append(f"| {name} | {pct(m)} | {100 * m['gap_closed']:.0f} % |")
    return "\n".join(rows)


def _write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamp(result), indent=2) + "\n")


if __name__ == "__main__":
    main()
