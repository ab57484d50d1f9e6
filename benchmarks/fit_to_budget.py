"""Fit to budget on Fashion-MNIST: does the size stage's untrained choice meet its p90 budget once trained, and is
it within 0.5 points of the most accurate candidate of a coarse grid that also meets the budget?

Writes ``benchmarks/results/fit_to_budget.json``. The student family is the flagship recipe's
(``examples/fashion_mnist.toml``: ``mobilenet``, its params as the base of every candidate); the target is this
host's laptop-x86-like profile (x86_64, this host's cores, 1 thread, 20 MB, 512 MB peak RAM) with three p90
budgets, tight / medium / loose, so latency is judged where it is measured.

1. ``size``: for each budget, the size stage's own verb (:func:`edgedistill.sizing.size_student`) on that recipe with
   ``student.size = "fit"`` (its default 10 % margin): the chosen candidate, what it measured and what it cost.
2. ``train``: each candidate of the coarse grid (``width_mult`` x ``depth`` x ``blocks``) and each chosen one,
   trained alike (the distill stage's function, ``ce`` on ``--train-samples`` training images, ``--epochs`` epochs,
   seed 0), two at a time, one thread each.
3. ``measure``: each trained model exported (the export stage's ``export_onnx``) and INT8-quantized (the recipe's
   ``[ptq]``, calibrated on training images), test accuracy of both through ONNX Runtime on the 10 k test images;
   then every file benchmarked together, interleaved, 1 thread, with the bench stage's harness and settings.
4. judge: per budget, each trained candidate's deliverable by the report's rule (``choose_deliverable``, tolerance 1
   point, favour latency) and whether it meets the budget; the chosen one against the most accurate grid candidate
   that meets it.

    PYTHONPATH=$PWD python benchmarks/fit_to_budget.py
    PYTHONPATH=$PWD python benchmarks/fit_to_budget.py --part text   # the text-embedding student, sized only
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._provenance import stamp  # noqa: E402
from edgedistill._machine import cpu_count, machine_info  # noqa: E402
from edgedistill.budgets import choose_deliverable, judge, misses  # noqa: E402
from edgedistill.recipe import load_recipe, recipe_from_dict  # noqa: E402
from edgedistill.targets import Budgets, Target  # noqa: E402
from edgedistill.tasks import get_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "fit_to_budget.json"
RECIPE = ROOT / "examples" / "fashion_mnist.toml"
TEXT_RECIPE = ROOT / "examples" / "text_embedding.toml"
BUDGETS_MS = {"tight": 0.05, "medium": 0.09, "loose": 0.15}
GRID = {"width_mult": [0.5, 1.0, 2.0], "depth": [2, 3, 4], "blocks": [1, 2]}


def host_target(p90_ms: float) -> Target:
    return Target(name=f"this-host-1-thread-p90-{p90_ms:g}ms", description="laptop-x86-like: this host, 1 thread",
                  architecture="x86_64", cores=cpu_count(), threads=1,
                  budgets=Budgets(size_mb=20.0, p90_ms=p90_ms, peak_ram_mb=512.0))


def base_recipe(args):
    rec = load_recipe(str(RECIPE))
    return dataclasses.replace(rec, student=dataclasses.replace(rec.student, size="fit"))


def size(args, splits, task) -> dict:
    """The size stage's verb for each budget."""
    from edgedistill.sizing import size_student

    rec, out = base_recipe(args), {}
    for name, p90 in BUDGETS_MS.items():
        with tempfile.TemporaryDirectory() as d:
            r = size_student(rec, splits, task, host_target(p90), Path(d), lambda m: print(m, file=sys.stderr))
        keep = ("size_mb", "p90_ms", "peak_rss_mb", "macs", "parameters", "precision")
        out[name] = {"p90_budget_ms": p90, "chosen": r["chosen"], "measured": r["measured"],
                     "candidates": len(r["candidates"]), "seconds": r["seconds"],
                     "chosen_untrained": next({k: c.get(k) for k in keep}
                                              for c in r["candidates"] if c["knobs"] == r["chosen"]["knobs"]),
                     "untrained": {_key(c["knobs"]): {**{k: c.get(k) for k in keep}, "within_budget": c["within_budget"]}
                                   for c in r["candidates"] if c["status"] == "measured"}}
    return out


# ---------------------------------------------------------------- training (worker processes)

_DATA: dict = {}


def _init(data: dict) -> None:
    torch.set_num_threads(1)
    _DATA.update(data)


def _train(job: dict) -> dict:
    """One candidate, trained with ``ce`` as the distill stage trains (no teacher); its state dict saved."""
    from edgedistill.data import Splits
    from edgedistill.distill.stage import distill
    from edgedistill.models import build_model, count_params

    args, splits = _DATA["args"], _DATA["splits"]
    rec = base_recipe(args)
    params = {**rec.student.params, **job["knobs"]}
    recipe = recipe_from_dict({"seed": 0, "data": {"batch_size": rec.data.batch_size, "workers": 0},
                               "student": {"arch": rec.student.arch, "params": params},
                               "distill": {"epochs": args.epochs, "lr": rec.distill.lr, "device": "cpu",
                                           "losses": [{"name": "ce"}]}})
    train = splits.train.subset(np.arange(min(args.train_samples, len(splits.train))))
    sub = Splits(train, splits.val, splits.test, num_classes=splits.num_classes, input_shape=splits.input_shape,
                 name=splits.name)
    torch.manual_seed(0)
    model = build_model(rec.student.arch, params, splits.input_shape, splits.num_classes, "student")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        distill(model, None, sub, recipe, Path(d) / "distill")
    torch.save(model.state_dict(), job["path"])
    return {"knobs": job["knobs"], "params": params, "parameters": count_params(model),
            "train_seconds": round(time.perf_counter() - t0, 1)}


def train_all(args, splits, knobs: list[dict], work: Path) -> dict[str, dict]:
    jobs, done = [], {}
    for k in knobs:
        key = _key(k)
        path = work / f"{key}.pt"
        info = work / f"{key}.json"
        if info.exists():
            done[key] = json.loads(info.read_text())
        else:
            jobs.append({"knobs": k, "path": str(path)})
    with ProcessPoolExecutor(args.workers, mp_context=get_context("fork"), initializer=_init,
                             initargs=({"args": args, "splits": splits},)) as pool:
        for r in pool.map(_train, jobs):
            key = _key(r["knobs"])
            (work / f"{key}.json").write_text(json.dumps(r))
            done[key] = r
            print(f"trained {key} in {r['train_seconds']:.0f} s", file=sys.stderr, flush=True)
    return done


def _key(knobs: dict) -> str:
    return "_".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in knobs.items())


# ---------------------------------------------------------------- export, quantize, accuracy, bench

def measure(args, splits, task, trained: dict[str, dict], work: Path) -> dict[str, dict]:
    from edgedistill.bench import benchmark
    from edgedistill.export import export_onnx
    from edgedistill.models import build_model
    from edgedistill.quant.calibration import calibration_sample
    from edgedistill.quant.ptq import quantize_int8

    rec = base_recipe(args)
    calib = calibration_sample(splits.train, rec.ptq.samples, rec.seed)
    files = {}
    for key, t in trained.items():
        model = build_model(rec.student.arch, t["params"], splits.input_shape, splits.num_classes, "student")
        model.load_state_dict(torch.load(work / f"{key}.pt", weights_only=True))
        fp32, int8 = work / f"{key}_fp32.onnx", work / f"{key}_int8.onnx"
        if not int8.exists():
            export_onnx(model, fp32, task.export_inputs(model, splits.train, 64), rec.export, exporter=task.exporter,
                        opset=task.opset)
            quantize_int8(fp32, int8, calib, rec.ptq)
        for precision, path in (("fp32", fp32), ("int8", int8)):
            files[str(path)] = (key, precision, task.metric(path, splits.test)["value"])
    bench = benchmark(list(files), target=host_target(max(BUDGETS_MS.values())), runs=rec.bench.runs,
                      warmup=rec.bench.warmup, min_seconds=rec.bench.min_seconds, ci_tolerance=rec.bench.ci_tolerance,
                      max_seconds=rec.bench.max_seconds)
    out: dict[str, dict] = {}
    for m in bench["models"]:
        key, precision, acc = files[m["path"]]
        out.setdefault(key, {"knobs": trained[key]["knobs"], "parameters": trained[key]["parameters"],
                             "train_seconds": trained[key]["train_seconds"]})[precision] = {
            "test_accuracy": round(acc, 4), "size_mb": round(m["size_mb"], 4),
            "p50_ms": round(m["latency_ms"]["p50"], 4), "p90_ms": round(m["latency_ms"]["p90"], 4),
            "peak_rss_mb": round(m["peak_rss_mb"], 1)}
    return out, bench["machine"], bench["settings"]


def _records(row: dict) -> list[dict]:
    return [{"name": p, "role": "student", "precision": p, "metric": {"name": "accuracy", "value": row[p]["test_accuracy"]},
             "size_mb": row[p]["size_mb"], "latency_ms": {"p90": row[p]["p90_ms"]}, "peak_rss_mb": row[p]["peak_rss_mb"]}
            for p in ("fp32", "int8")]


def verdict(row: dict, p90_ms: float) -> dict:
    """The candidate's deliverable by the report's rule, whether it meets every budget, and its accuracy."""
    budgets = host_target(p90_ms).budgets
    records = _records(row)
    name, _ = choose_deliverable(records, budgets, tolerance=1.0)
    best = next(r for r in records if r["name"] == name)
    missed = misses(judge(best, budgets))
    return {"precision": name, "meets_budget": not missed, "misses": missed,
            "test_accuracy": best["metric"]["value"], "p90_ms": best["latency_ms"]["p90"]}


def text_sizing(args) -> dict:
    """``--part text``: the size stage on the text-embedding flagship's student (``transformer-layers`` of
    all-MiniLM-L6-v2, vocabulary pruned to the run's texts) under a 20 MB budget and laptop-x86's p90 of 5 ms at one
    thread on this host (32-token inputs): which layer count it would train. Untrained only: the trained grid of
    MiniLM students is not run (hours on this CPU)."""
    from edgedistill.sizing import size_student

    rec = load_recipe(str(TEXT_RECIPE))
    rec = dataclasses.replace(rec, student=dataclasses.replace(rec.student, size="fit"))
    task = get_task(rec.task)
    splits = task.load_data(rec.data, rec.seed)
    target = dataclasses.replace(host_target(5.0), name="this-host-1-thread-20MB-p90-5ms")
    with tempfile.TemporaryDirectory() as d:
        r = size_student(rec, splits, task, target, Path(d), lambda m: print(m, file=sys.stderr))
    keep = ("status", "reason", "macs", "parameters", "precision", "size_mb", "p90_ms", "peak_rss_mb", "within_budget",
            "models")
    return {"recipe": str(TEXT_RECIPE.relative_to(ROOT)), "budgets": dataclasses.asdict(target.budgets),
            "margin": r["margin"], "chosen": r["chosen"], "measured": r["measured"], "seconds": r["seconds"],
            "candidates": [{"layers": c["knobs"]["layers"], **{k: c.get(k) for k in keep}} for c in r["candidates"]]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("grid", "text"), default="grid",
                    help="grid: Fashion-MNIST, three budgets, the trained grid; text: the text-embedding student's "
                         "sizing (key text_embedding; the other part's figures are kept)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-samples", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default=".cache/fit_to_budget")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    out = Path(args.out)
    kept = json.loads(out.read_text()) if out.exists() else {}
    if args.part == "text":
        kept["text_embedding"] = stamp(text_sizing(args))
        out.write_text(json.dumps(kept, indent=2) + "\n")
        t = kept["text_embedding"]
        print(f"text: chosen {t['chosen']['knobs']} ({t['measured']} measured in {t['seconds']:.0f} s)")
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rec = base_recipe(args)
    task = get_task(rec.task)
    splits = task.load_data(rec.data, rec.seed)

    t0 = time.perf_counter()
    sized = size(args, splits, task)
    size_s = time.perf_counter() - t0
    grid = [dict(zip(GRID, v)) for v in itertools.product(*GRID.values())]
    chosen = [s["chosen"]["knobs"] for s in sized.values()]
    knobs = grid + [k for k in chosen if k not in grid]
    trained = train_all(args, splits, knobs, work)
    rows, machine, settings = measure(args, splits, task, {_key(k): trained[_key(k)] for k in knobs}, work)

    table = {}
    for name, p90 in BUDGETS_MS.items():
        pick = _key(sized[name]["chosen"]["knobs"])
        verdicts = {key: verdict(row, p90) for key, row in rows.items()}
        grid_ok = {key: v for key, v in verdicts.items() if v["meets_budget"] and rows[key]["knobs"] in grid}
        best = max(grid_ok, key=lambda k: grid_ok[k]["test_accuracy"]) if grid_ok else None
        # the same with the budget less the size stage's margin: what the ranking rule alone gives up
        margin = base_recipe(args).student.fit_margin
        in_margin = {key: v for key, v in ((k, verdict(row, p90 * (1 - margin))) for k, row in rows.items())
                     if v["meets_budget"] and rows[key]["knobs"] in grid}
        best_m = max(in_margin, key=lambda k: in_margin[k]["test_accuracy"]) if in_margin else None
        mine = verdicts[pick]
        table[name] = {
            **sized[name], "chosen_trained": mine,
            "best_grid_within_budget_less_margin": {"knobs": rows[best_m]["knobs"], **in_margin[best_m]} if best_m else None,
            "best_grid_within_budget": {"knobs": rows[best]["knobs"], **grid_ok[best]} if best else None,
            "points_below_best": round(100 * (grid_ok[best]["test_accuracy"] - mine["test_accuracy"]), 2) if best else None,
            "grid_within_budget": len(grid_ok),
            "done": bool(mine["meets_budget"] and best and
                         100 * (grid_ok[best]["test_accuracy"] - mine["test_accuracy"]) <= 0.5),
        }
    result = {"recipe": str(RECIPE.relative_to(ROOT)), "family": rec.student.arch, "base_params": rec.student.params,
              "grid": GRID, "epochs": args.epochs, "train_samples": args.train_samples,
              "budgets_ms": BUDGETS_MS, "sizing_seconds_all_budgets": round(size_s, 1),
              "budgets": table, "candidates": rows, "machine": machine, "bench_settings": settings,
              "host": machine_info()}
    stamp(result)
    if "text_embedding" in kept:  # the other part's figures, with their own command and commit
        result["text_embedding"] = kept["text_embedding"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, t in table.items():
        b = t["best_grid_within_budget"]
        print(f"{name} p90 <= {t['p90_budget_ms']} ms: chosen {t['chosen']['knobs']} -> {t['chosen_trained']} ; "
              f"best grid {b and b['knobs']} {b and b['test_accuracy']} ; below by {t['points_below_best']} ; "
              f"done {t['done']}")


if __name__ == "__main__":
    main()
