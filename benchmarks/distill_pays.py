"""Distillation that pays: when a teacher is worth it, and whether the auto defaults ever cost accuracy.

Writes ``benchmarks/results/distill_pays.json``, one key per part (a part's run replaces its key only):

* ``few_labels`` — the setting where a teacher matters. Fashion-MNIST's 60 k training images are split once
  (fixed seed): 30 k train the teacher, which the user does not have; the user has 25 k others, of which
  ``L`` (1 000 and 5 000) are labelled, plus ``L/10`` labelled validation images of their own. The student
  trained on the ``L`` labelled images alone (``ce``, as many optimiser steps as the distilled one, with and
  without ``augment``) is compared with the student distilled on all 25 k (``kd``, the labelled ones with
  their labels, every one with the teacher's soft labels from the cache), with the product's defaults:
  ``alpha`` and ``temperature`` "auto", chosen on the user's validation images. 3 seeds, mean +- std,
  and the share of the scratch -> teacher gap closed, on the 10 k test set.
* ``full_labels`` — the setting of ``distill_methods_6k_subset.json`` (every one of 6 000 training images
  labelled, a width-32 CNN teacher trained without augmentation, a width-8 CNN student, 8 epochs, 3 seeds)
  again, ``ce`` against ``kd`` with the auto defaults; 600 of the 6 000 are held out as the validation split
  the search chooses on, so both students train on 5 400.
* ``loop`` — samples/s of ``fit`` over a 20-line hand-written KD loop, tiny student, 1 thread, interleaved
  (``benchmarks/distill_methods.py``'s ``speed``).

Every training run is the distill stage's own function (``edgedistill.distill.stage.distill``) with a recipe,
so the auto search is the product's. Runs are independent: ``--workers 2`` runs two at a time, 1 thread each.

    PYTHONPATH=$PWD python benchmarks/distill_pays.py --part few_labels --workers 2
    PYTHONPATH=$PWD python benchmarks/distill_pays.py --part full_labels --workers 2
    PYTHONPATH=$PWD python benchmarks/distill_pays.py --part loop
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._provenance import stamp  # noqa: E402
from benchmarks.distill_methods import _summary as dm_summary, load_fmnist  # noqa: E402
from edgedistill._machine import machine_info  # noqa: E402
from edgedistill.data import ArraySplit, Splits  # noqa: E402
from edgedistill.distill.train import evaluate_accuracy  # noqa: E402
from edgedistill.models import build_model, count_params  # noqa: E402
from edgedistill.recipe import recipe_from_dict  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "distill_pays.json"
SHAPE = (1, 28, 28)


def _model(arch: str, params: dict, seed: int):
    torch.manual_seed(seed)
    return build_model(arch, params, SHAPE, 10, "bench")


def _recipe(args, student: dict, distill: dict) -> object:
    return recipe_from_dict({"seed": distill.pop("seed"), "data": {"batch_size": args.batch_size, "workers": 0},
                             "student": student,
                             "distill": {"lr": args.lr, "weight_decay": 1e-4, "device": "cpu", **distill}})


def train_teacher(args, train: ArraySplit, test: ArraySplit, path: Path) -> dict:
    """The teacher (``--teacher``), trained on ``train`` alone, kept at ``path`` between runs."""
    spec = json.loads(args.teacher)
    teacher = _model(spec["arch"], spec["params"], 0)
    seconds = None
    if path.exists():
        teacher.load_state_dict(torch.load(path, weights_only=True))
    else:
        from edgedistill.distill.stage import distill

        torch.set_num_threads(args.teacher_threads)
        recipe = _recipe(args, spec, {"seed": 0, "epochs": args.teacher_epochs, "augment": args.teacher_augment,
                                      "losses": [{"name": "ce"}]})
        splits = Splits(train, ArraySplit(train.x[:0], train.y[:0]), test, num_classes=10, input_shape=SHAPE, name="fm")
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            distill(teacher, None, splits, recipe, Path(d) / "teacher")
        seconds = round(time.perf_counter() - t0, 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(teacher.state_dict(), path)
    return {**spec, "parameters": count_params(teacher), "epochs": args.teacher_epochs, "augment": args.teacher_augment,
            "train_samples": len(train),
            "test_accuracy": evaluate_accuracy(teacher.eval(), test, 1000), "train_seconds": seconds}


# ---------------------------------------------------------------- one training run (a worker process)

_DATA: dict = {}


def _init(data: dict) -> None:
    torch.set_num_threads(1)
    _DATA.update(data)


def _run(job: dict) -> dict:
    """One student: ``job`` names the split of ``_DATA`` to train on, the recipe's distill section and the seed."""
    from edgedistill.distill.stage import distill

    args, d = _DATA["args"], _DATA
    spec = json.loads(args.student) if job.get("student") is None else job["student"]
    train = d[job["train"]]
    splits = Splits(train, d[job["val"]], d["test"], num_classes=10, input_shape=SHAPE, name="fm")
    teacher = None
    if job["teacher"]:
        t = json.loads(job["teacher"])
        teacher = _model(t["arch"], t["params"], 0)
        teacher.load_state_dict(torch.load(job["teacher_path"], weights_only=True))
    student = _model(spec["arch"], spec["params"], job["seed"])
    recipe = _recipe(args, spec, {**job["distill"], "seed": job["seed"]})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cache = job.get("cache_dir")
        meta = distill(student, teacher, splits, recipe, Path(tmp) / "distill", cache_dir=cache)
    return {"name": job["name"], "seed": job["seed"], "test": evaluate_accuracy(student, d["test"], 1000),
            "val": meta["final"].get("val_acc"), "settings": meta["settings"],
            "seconds": round(time.perf_counter() - t0, 1), "train_samples": len(train)}


def _summary(runs: list[dict]) -> dict:
    return {**dm_summary([r["test"] for r in runs]), "runs": runs}


def _pool(args, data: dict, jobs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    with ProcessPoolExecutor(args.workers, mp_context=get_context("fork"), initializer=_init,
                             initargs=({**data, "args": args},)) as pool:
        for r in pool.map(_run, jobs):
            print(f"{r['name']} seed {r['seed']}: test {r['test']:.4f} ({r['seconds']:.0f} s) "
                  f"settings {r['settings'].get('alpha')}/{r['settings'].get('temperature')}", file=sys.stderr, flush=True)
            out.setdefault(r["name"], []).append(r)
    return out


def _gap(value: float, scratch: float, teacher: float) -> float:
    return (value - scratch) / (teacher - scratch)


# ---------------------------------------------------------------- the parts

def few_labels(args) -> dict:
    full, _, test = load_fmnist(60000, 0)  # the 60 k training images in the fixed shuffled order, and the test set
    x, y = full.x, full.y
    teacher_part, user = slice(0, 30000), slice(30000, 55000)
    teacher_path = Path(args.teacher_dir) / "distill_pays_teacher.pt"
    teacher = train_teacher(args, ArraySplit(x[teacher_part], y[teacher_part]), test, teacher_path)
    print(f"teacher: {teacher['test_accuracy']:.4f}", file=sys.stderr, flush=True)
    result = {"teacher": teacher, "student": json.loads(args.student), "settings": {}}
    ux, uy = x[user], y[user]
    cache_root = Path(tempfile.mkdtemp(prefix="distill_pays_cache_"))
    for labels in args.labels:
        hidden = uy.copy()
        hidden[labels:] = -1  # the user's labels: the first `labels` of their 25 k images
        val = ArraySplit(x[55000:55000 + labels // 10], y[55000:55000 + labels // 10])
        data = {"all": ArraySplit(ux, hidden), "labelled": ArraySplit(ux[:labels], uy[:labels]), "val": val,
                "test": test}
        scratch_epochs = args.epochs * len(ux) // labels  # as many optimiser steps as the distilled student
        jobs = []
        for seed in range(args.seeds):
            base = {"seed": seed, "val": "val", "teacher": None}
            jobs += [{**base, "name": "scratch", "train": "labelled",
                      "distill": {"epochs": scratch_epochs, "losses": [{"name": "ce"}]}},
                     {**base, "name": "scratch_augment", "train": "labelled",
                      "distill": {"epochs": scratch_epochs, "augment": True, "losses": [{"name": "ce"}]}},
                     {**base, "name": "kd_auto", "train": "all", "teacher": args.teacher, "teacher_path": str(teacher_path),
                      "cache_dir": str(cache_root / str(labels)),
                      "distill": {"epochs": args.epochs, "cache": True, "cache_top_k": 10, "losses": [{"name": "kd"}]}}]
        # the cache is built once, by the first kd run; the others find it
        first = [next(j for j in jobs if j["name"] == "kd_auto"), jobs[0]]
        runs = _pool(args, data, first)
        for name, rs in _pool(args, data, [j for j in jobs if j not in first]).items():
            runs.setdefault(name, []).extend(rs)
        table = {name: _summary(rs) for name, rs in runs.items()}
        t = teacher["test_accuracy"]
        for name in ("kd_auto", "scratch_augment"):
            table[name]["gap_closed"] = _gap(table[name]["mean"], table["scratch"]["mean"], t)
        table["kd_auto"]["gap_closed_vs_scratch_augment"] = _gap(table["kd_auto"]["mean"],
                                                                 table["scratch_augment"]["mean"], t)
        result["settings"][str(labels)] = {"labelled": labels, "unlabelled": len(ux) - labels, "val": len(val),
                                           "epochs": args.epochs, "scratch_epochs": scratch_epochs, **table}
    return result


def full_labels(args) -> dict:
    train, val, test = load_fmnist(6000 - 600, 600)
    teacher_path = Path(args.teacher_dir) / "distill_pays_teacher_6k.pt"
    teacher = train_teacher(args, train, test, teacher_path)
    data = {"train": train, "val": val, "test": test}
    jobs = []
    for seed in range(args.seeds):
        base = {"seed": seed, "train": "train", "val": "val", "student": json.loads(args.student)}
        jobs += [{**base, "name": "scratch", "teacher": None, "distill": {"epochs": args.epochs, "losses": [{"name": "ce"}]}},
                 {**base, "name": "kd_auto", "teacher": args.teacher, "teacher_path": str(teacher_path),
                  "distill": {"epochs": args.epochs, "losses": [{"name": "kd"}]}}]
    runs = _pool(args, data, jobs)
    table = {name: _summary(rs) for name, rs in runs.items()}
    k, s = table["kd_auto"], table["scratch"]
    table["kd_auto"]["gap_closed"] = _gap(k["mean"], s["mean"], teacher["test_accuracy"])
    table["kd_auto"]["within_one_std_or_better"] = k["mean"] >= s["mean"] - max(k["std"], s["std"])
    return {"teacher": teacher, "student": json.loads(args.student), "train_samples": len(train),
            "val_samples": len(val), "epochs": args.epochs, **table}


def loop(args) -> dict:
    from benchmarks import distill_methods as dm

    ns = argparse.Namespace(lr=5e-3, weight_decay=1e-4, temperature=4.0, alpha=0.5, batch_size=128,
                            speed_epochs=2, speed_rounds=args.rounds, speed_samples=6000, cache_k=5)
    train, _, _ = load_fmnist(6000, 0)
    teacher = _model("cnn", {"width": 32, "depth": 3}, 0).eval()  # untrained: the speed does not depend on it
    speed = dm.speed(teacher, train, ns)
    return {"student": dm.STUDENT, "teacher": {"arch": "cnn", "width": 32, "depth": 3}, **speed}


PARTS = {"few_labels": few_labels, "full_labels": full_labels, "loop": loop}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=sorted(PARTS), required=True)
    ap.add_argument("--labels", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="distill epochs (few_labels: 12, full_labels: 8); teacher: 15 / 8")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--teacher", default=None, help="teacher as JSON {arch, params}")
    ap.add_argument("--teacher-epochs", type=int, default=None)
    ap.add_argument("--teacher-threads", type=int, default=2)
    ap.add_argument("--teacher-augment", type=int, choices=(0, 1), default=None,
                    help="train the teacher with shifts and flips (few_labels: 1; full_labels: 0, as the 6 k-subset run)")
    ap.add_argument("--student", default=None, help="student as JSON {arch, params}")
    ap.add_argument("--teacher-dir", default=".cache")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7, help="loop: interleaved rounds")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    few = args.part == "few_labels"
    args.epochs = args.epochs or (12 if few else 8)
    args.teacher_epochs = args.teacher_epochs or (15 if few else 8)
    args.teacher_augment = bool(few if args.teacher_augment is None else args.teacher_augment)
    args.teacher = args.teacher or json.dumps({"arch": "cnn", "params": {"width": 32, "depth": 3}})
    args.student = args.student or json.dumps({"arch": "cnn", "params": {"width": 16 if few else 8, "depth": 3}})
    load = Path("/proc/loadavg").read_text().split()[:3]
    t0 = time.perf_counter()
    part = PARTS[args.part](args)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    result[args.part] = stamp({**part, "seconds": round(time.perf_counter() - t0, 1), "load_before": load,
                               "load_after": Path("/proc/loadavg").read_text().split()[:3], "machine": machine_info(),
                               "torch": torch.__version__})
    done = [result[k] for k in PARTS if k in result]  # the file's own provenance: every part's, in part order
    result.update(command=" && ".join(p["command"] for p in done), commit=result[args.part]["commit"],
                  note="each part records the command and the commit that produced it; 'commit' is the latest run's")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in part.items() if k != "settings"}, default=str)[:2000])


if __name__ == "__main__":
    main()
