"""Fit to budget: size the student to the target before training it (``student.size = "fit"``).

An INT8 model's file size, latency and memory depend on its shape, not on its trained weights, so they can be
measured on untrained candidates in seconds, before any training. A student family declares its search space
where it registers (``MODELS.register(name, space={knob: [values]})``, or a function of the recipe's params
returning that table); the candidates are every combination of the knobs over the recipe's own params, ranked by
multiply-accumulates of one sample (MACs, ties broken by parameters): the most capable first.

A measured candidate is exported FP32 and INT8 (PTQ as the recipe's ``[ptq]`` section says, calibrated on a few
real training samples) and benchmarked with the bench stage's harness (:func:`edgedistill.bench.benchmark`),
interleaved, at the target's threads: on the target over SSH when the target names a remote, else on this host,
which the result says. A candidate fits when one of its precisions meets every budget of the target with
``student.fit_margin`` to spare (``measured <= budget * (1 - margin)``); the most capable one that fits is
trained.

Search: candidates whose parameters alone exceed the size budget at one byte each (the least an INT8 weight
takes) are not measured; of the others, rounds of at most ``per_round`` candidates spread over the ranking are
measured together, until no unmeasured candidate ranks above the best one that fits (at most ``rounds`` rounds;
those left are recorded as not measured). A candidate at least as large in every knob as one that misses a budget
is not measured either: latency, size and memory grow with each knob, though not with MACs across knobs. With none
that fits, :class:`BudgetError` names the budget, the closest candidate and by how much it misses, before any
training.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import _io
from .budgets import judge, misses
from .errors import EXIT_BUDGET_MISSED, ConfigError, EdgeDistillError

SIZING_FILE = "sizing.json"
REFIT_FILE = "refit.json"  # written by `run --refit`; not an output of the stage (re-measuring removes it)
CALIBRATION_SAMPLES = 32
PARITY_SAMPLES = 8
#: the bench settings a candidate is measured with: shorter than the bench stage's (the margin absorbs the noise)
BENCH_SETTINGS = {"runs": 50, "warmup": 5, "min_seconds": 0.1, "max_seconds": 0.5}


class BudgetError(EdgeDistillError):
    """No student candidate can meet the target's budgets: the run stops before training (exit 3)."""

    exit_code = EXIT_BUDGET_MISSED


def search_space(arch: str, params: dict) -> dict[str, list]:
    """The knobs ``arch`` declares and the values to try (its ``space`` in the model registry)."""
    from .models import MODELS

    space = MODELS.meta(arch).get("space")
    space = space(params) if callable(space) else space
    if space is None:
        how = ("give your factory function a `space` attribute, e.g. build.space = {'width': [8, 16, 32]} (each "
               "keyword of `kwargs` to try and its values)" if arch == "factory" else
               f"register it with MODELS.register({arch!r}, space={{'width': [8, 16, 32]}}) (each knob and the values "
               "to try)")
        raise ConfigError(f"student.size: the student family {arch!r} declares no search space, so it cannot be "
                          f"sized to the budget; {how}, or set student.size = \"params\" and size it by hand.")
    if not isinstance(space, dict) or not space or any(not isinstance(v, (list, tuple)) or not v for v in space.values()):
        raise ConfigError(f"student.size: the search space of {arch!r} must map each knob to a non-empty list of "
                          f"values; it is {space!r}.")
    return {k: list(v) for k, v in space.items()}


def count_macs(model, inputs) -> int:
    """Multiply-accumulates of one forward pass over ``inputs`` (one sample) in the convolutions and linear layers
    (where nearly all of a student's arithmetic is)."""
    import torch
    from torch import nn

    total = 0

    def hook(module, args, out):
        nonlocal total
        if isinstance(module, nn.Linear):
            total += out.numel() * module.in_features
        else:
            total += out.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    try:
        with torch.no_grad():
            if isinstance(inputs, dict):
                model(**{k: torch.from_numpy(np.ascontiguousarray(v[:1])) for k, v in inputs.items()})
            else:
                model(torch.from_numpy(np.ascontiguousarray(inputs[:1])))
    finally:
        for h in handles:
            h.remove()
    return int(total)


def candidates(base: dict, space: dict[str, list], build: Callable[[dict], object], inputs) -> list[dict]:
    """Every combination of ``space`` over ``base``, built untrained, ranked most capable first; each with its
    ``knobs``, full ``params``, ``macs`` and ``parameters`` (or a ``reason`` it could not be built)."""
    from .models import count_params

    out = []
    for values in itertools.product(*space.values()):
        knobs = dict(zip(space, values))
        entry = {"knobs": knobs, "params": with_knobs(base, knobs), "macs": None, "parameters": None}
        try:
            model = build(entry["params"]).eval()
            entry.update(macs=count_macs(model, inputs), parameters=count_params(model))
        except Exception as e:  # noqa: BLE001 - a combination the family refuses (ValueError, ConfigError, shape errors)
            entry.update(status="not built", reason=_first_line(e))
        out.append(entry)
    built = sorted((c for c in out if c["macs"] is not None), key=lambda c: (-c["macs"], -c["parameters"]))
    return built + [c for c in out if c["macs"] is None]


def with_knobs(base: dict, knobs: dict) -> dict:
    """``base`` params with each knob set; a dotted knob (``kwargs.width``) sets a key of a nested table."""
    out = dict(base)
    for name, value in knobs.items():
        *path, key = name.split(".")
        table = out
        for part in path:
            table[part] = dict(table.get(part) or {})
            table = table[part]
        table[key] = value
    return out


def limits(budgets, margin: float):
    """The budgets a candidate must meet: each hardware budget less ``margin`` of it; ``min_metric`` left out
    (an untrained model has no metric worth judging)."""
    def cut(v):
        return None if v is None else v * (1.0 - margin)
    return dataclasses.replace(budgets, size_mb=cut(budgets.size_mb), p90_ms=cut(budgets.p90_ms),
                               peak_ram_mb=cut(budgets.peak_ram_mb), min_metric=None)


def fit_student(arch: str, base: dict, build: Callable[[dict], object], export: Callable[[object, Path], None],
                quantize: Optional[Callable[[Path, Path], None]], inputs, target, margin: float, *,
                work_dir: Path, measure: Optional[Callable[[list[str]], dict]] = None, per_round: int = 6,
                rounds: int = 6, log: Callable[[str], None] = lambda msg: None) -> dict:
    """Size ``arch`` to ``target``: the ``sizing`` record of ``report.json`` (``candidates``, ``chosen``, ...).

    ``build(params)`` makes an untrained model, ``export(model, path)`` writes its FP32 ONNX file and
    ``quantize(fp32_path, int8_path)`` its INT8 one (None: FP32 only, PTQ is off); ``inputs`` are real samples as
    the model's inputs (the first one counts the MACs). ``measure(paths)`` benchmarks files interleaved (the bench
    harness at the target's threads by default; a test passes a fake timer).
    """
    t0 = time.perf_counter()
    space = search_space(arch, base)
    cands = candidates(base, space, build, inputs)
    allowed = limits(target.budgets, margin)
    for c in cands:
        if c["macs"] is not None and allowed.size_mb is not None and c["parameters"] / 1e6 > allowed.size_mb:
            c.update(status="too large", reason=f"{c['parameters']:,} parameters need at least "
                     f"{c['parameters'] / 1e6:.3f} MB at INT8 > {allowed.size_mb:.3f} MB (the size budget less the margin)")
    measure = measure or _bench_measure(target)
    machine: dict = {}
    for round_no in range(1, rounds + 1):
        todo = _next_round(cands, per_round)
        if not todo:
            break
        log(f"[size] round {round_no}: measuring {len(todo)} candidate(s) of {len(cands)}")
        machine = _measure_round(todo, build, export, quantize, measure, allowed, work_dir) or machine
    below = _below_best(cands)
    if below:  # what --refit would train next: measured too
        log(f"[size] measuring the candidate below the best one that fits: {knob_text(below['knobs'])}")
        machine = _measure_round([below], build, export, quantize, measure, allowed, work_dir) or machine
    best = _best(cands)
    for i, c in enumerate(cands):
        if "status" not in c:
            c.update(status="not measured", reason="ranks below the best candidate that fits"
                     if best is not None and i > cands.index(best) else f"left after {rounds} rounds")
    if best is None:
        raise BudgetError(_nothing_fits(cands, target.budgets, margin, arch))
    return {"arch": arch, "space": space, "margin": margin, "candidates": cands,
            "chosen": {"knobs": best["knobs"], "params": best["params"], "precision": best["precision"],
                       "why": _why(best, cands, margin)},
            "measured": sum(c["status"] == "measured" for c in cands), "machine": machine,
            "seconds": round(time.perf_counter() - t0, 3)}


def _next_round(cands: list[dict], k: int) -> list[dict]:
    """Up to ``k`` unmeasured candidates spread evenly over those that rank above the best fitting one so far
    (all, before any fits), the first and last of them included. A candidate at least as large in every knob as
    one measured to miss a budget is not measured: it is marked as missing too (``status`` "dominated")."""
    best = _best(cands)
    above = cands if best is None else cands[:cands.index(best)]
    missed = [c for c in cands if c.get("status") == "measured" and not c["within_budget"]]
    for c in above:
        big = next((m for m in missed if "status" not in c and _dominates(c["knobs"], m["knobs"])), None)
        if big is not None:
            c.update(status="dominated", within_budget=False,
                     reason=f"at least as large in every knob as {knob_text(big['knobs'])}, which misses a budget")
    open_ = [c for c in above if "status" not in c]
    if not open_:
        return []
    picks = sorted(set(np.linspace(0, len(open_) - 1, min(k, len(open_))).round().astype(int).tolist()))
    return [open_[i] for i in picks]


def _dominates(a: dict, b: dict) -> bool:
    """Whether knobs ``a`` are at least ``b``'s in every knob (numbers compared; any other value must be equal):
    latency, size and memory grow with each knob of a family, though not with MACs across knobs."""
    def ge(x, y) -> bool:
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
        return x >= y if numbers else x == y
    return all(ge(a[k], b[k]) for k in b)


def _below_best(cands: list[dict]) -> Optional[dict]:
    """The candidate ranked right below the best one that fits, when it is not measured yet."""
    best = _best(cands)
    if best is None:
        return None
    after = cands[cands.index(best) + 1:]
    return after[0] if after and "status" not in after[0] else None


def _measure_round(todo: list[dict], build, export, quantize, measure, allowed, work_dir: Path) -> dict:
    """Export and quantize each candidate of ``todo``, then benchmark every file together; fills in each
    candidate's figures and verdict. Returns the measuring machine's description."""
    files: dict[str, tuple[dict, str]] = {}
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="candidates-") as tmp:
        for i, c in enumerate(todo):
            fp32, int8 = Path(tmp) / f"c{i}_fp32.onnx", Path(tmp) / f"c{i}_int8.onnx"
            try:
                export(build(c["params"]).eval(), fp32)
                files[str(fp32)] = (c, "fp32")
                if quantize is not None:
                    quantize(fp32, int8)
                    files[str(int8)] = (c, "int8")
            except Exception as e:  # noqa: BLE001 - export and quantization fail in many ways; the reason is kept
                c.update(status="export failed", reason=_first_line(e))
                for p in [p for p, (owner, _) in files.items() if owner is c]:
                    del files[p]
        if not files:
            return {}
        result = measure(list(files))
    for m in result["models"]:
        c, precision = files[m["path"]]
        figures = {"size_mb": round(m["size_mb"], 4), "p90_ms": round(m["latency_ms"]["p90"], 4),
                   "peak_rss_mb": m.get("peak_rss_mb")}
        missed = misses(judge(m, allowed))
        c.setdefault("models", {})[precision] = {**figures, "misses": missed}
        c["status"] = "measured"
    for c in todo:
        if c.get("status") != "measured":
            continue
        ok = [p for p, f in c["models"].items() if not f["misses"]]
        # the precision that fits (the fastest of those that do), else the one closest to fitting
        pick = min(ok, key=lambda p: c["models"][p]["p90_ms"]) if ok else \
            min(c["models"], key=lambda p: (len(c["models"][p]["misses"]), c["models"][p]["p90_ms"]))
        c.update(within_budget=bool(ok), precision=pick, **{k: c["models"][pick][k] for k in
                                                           ("size_mb", "p90_ms", "peak_rss_mb")})
    return {k: result.get(k) for k in ("machine", "host_matches_target", "measured_on_target", "host_note", "remote")
            if result.get(k) is not None}


def _bench_measure(target, **settings) -> Callable[[list[str]], dict]:
    """The bench stage's harness (:func:`edgedistill.bench.benchmark`) at the target's threads, over SSH when
    the target names a remote, with :data:`BENCH_SETTINGS`."""
    from .bench import benchmark

    return lambda paths: benchmark(paths, target=target, **BENCH_SETTINGS, **settings)


def _best(cands: list[dict]) -> Optional[dict]:
    return next((c for c in cands if c.get("within_budget")), None)  # ranked most capable first


def _summary(c: dict) -> dict:
    return {k: c[k] for k in ("knobs", "params", "macs", "parameters", "precision", "size_mb", "p90_ms", "peak_rss_mb")}


def _why(best: dict, cands: list[dict], margin: float) -> str:
    above = [c for c in cands[:cands.index(best)] if c["status"] == "measured" and not c["within_budget"]]
    text = (f"{knob_text(best['knobs'])} is the most capable candidate measured within every budget less {100 * margin:g} % "
            f"({best['precision'].upper()}: {best['size_mb']:.3f} MB, p90 {best['p90_ms']:.3f} ms"
            + (f", peak RSS {best['peak_rss_mb']:.1f} MB" if best.get("peak_rss_mb") is not None else "")
            + f"; {best['macs']:,} MACs, {best['parameters']:,} parameters)")
    if above:
        nearest = above[-1]  # ranked right above the best
        missed = nearest["models"][nearest["precision"]]["misses"]
        text += f"; the next larger measured, {knob_text(nearest['knobs'])}, misses {'; '.join(missed)}"
    return text + "."


def _nothing_fits(cands: list[dict], budgets, margin: float, arch: str) -> str:
    measured = [c for c in cands if c.get("status") == "measured"]
    if not measured:  # every candidate ruled out before measuring (or none exported)
        smallest = min((c for c in cands if c["macs"] is not None), key=lambda c: (c["parameters"], c["macs"]), default=None)
        if smallest is None:
            return f"student.size: no candidate of {arch!r} could be built; see the search space's values."
        return (f"budgets.size_mb: no {arch} candidate fits {budgets.size_mb:g} MB less the {100 * margin:g} % margin; "
                f"the smallest, {knob_text(smallest['knobs'])}, {smallest.get('reason', 'could not be measured')}; raise "
                "the budget, lower student.fit_margin or add smaller values to the family's search space.")
    closest = min(measured, key=lambda c: _shortfall(c, budgets, margin))
    key, limit, value = _worst_budget(closest, budgets, margin)
    unit = "ms" if key == "p90_ms" else "MB"
    return (f"budgets.{key}: no {arch} candidate meets {limit:g} {unit} less the {100 * margin:g} % margin; the "
            f"closest, {knob_text(closest['knobs'])} ({closest['precision'].upper()}), measures {value:.3f} {unit}, "
            f"{100 * (value / (limit * (1 - margin)) - 1):.0f} % over; raise the budget, lower student.fit_margin or "
            "add smaller values to the family's search space.")


def _worst_budget(c: dict, budgets, margin: float) -> tuple[str, float, float]:
    """The budget ``c`` misses by the largest share: (key, budget, measured)."""
    rows = [("size_mb", budgets.size_mb, c["size_mb"]), ("p90_ms", budgets.p90_ms, c["p90_ms"]),
            ("peak_ram_mb", budgets.peak_ram_mb, c.get("peak_rss_mb"))]
    return max(((k, limit, v) for k, limit, v in rows if limit is not None and v is not None),
               key=lambda r: r[2] / (r[1] * (1 - margin)))


def _shortfall(c: dict, budgets, margin: float) -> float:
    _, limit, value = _worst_budget(c, budgets, margin)
    return value / (limit * (1 - margin))


def knob_text(knobs: dict) -> str:
    """A candidate's knobs as the log, the errors and the report write them: ``width=8, depth=2``."""
    return ", ".join(f"{k}={v}" for k, v in knobs.items())


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


# --- the size stage: a task's students, exported and quantized as the pipeline does ---------------------------

#: the exporter of the candidates: TorchScript's (a fraction of a second a model, where the dynamo exporter of the
#: export stage takes seconds); both give the same ONNX operators for the families that declare a search space
EXPORTER = "torchscript"


def size_student(recipe, splits, task, target, out_dir: Path, log: Callable[[str], None]) -> dict:
    """The size stage's verb: :func:`fit_student` over the recipe's student family, through ``task`` (how its
    students are built, fed, exported and quantized), calibrated on training samples, at the target's threads."""
    import torch

    from .export import export_onnx
    from .quant.calibration import calibration_sample
    from .quant.ptq import quantize_int8

    cfg = recipe.student

    def build(params: dict):
        torch.manual_seed(recipe.seed)
        return task.untrained_student(recipe, splits, params)

    probe = build(cfg.params)
    inputs = task.export_inputs(probe, splits.train, PARITY_SAMPLES)  # the training split: the test split never chooses
    mode = task.ptq_mode if recipe.ptq.mode == "auto" else recipe.ptq.mode
    calib = calibration_sample(splits.train, CALIBRATION_SAMPLES, recipe.seed) if mode == "static" else None
    ptq = dataclasses.replace(recipe.ptq, max_drop=None)  # the fallback needs a trained model's metric

    def export(model, path: Path) -> None:
        export_onnx(model, path, inputs, recipe.export, exporter=EXPORTER, opset=task.opset)

    def quantize(fp32: Path, int8: Path) -> None:
        quantize_int8(fp32, int8, calib, ptq, mode=mode, fusion=task.fusion_args(probe))

    result = fit_student(cfg.arch, cfg.params, build, export, quantize if recipe.ptq.enabled else None, inputs,
                         target, cfg.fit_margin, work_dir=Path(out_dir),
                         measure=_bench_measure(target, batch_size=recipe.bench.batch_size, seq_len=recipe.bench.seq_len),
                         log=log)
    result.update(exporter=EXPORTER, calibration_samples=0 if calib is None else len(calib),
                  bench_settings=BENCH_SETTINGS)
    log(f"[size] {result['chosen']['why']} ({result['measured']} of {len(result['candidates'])} candidates measured "
        f"in {result['seconds']:.1f} s)")
    return result


# --- the run folder: the chosen student and --refit -------------------------------------------------------

def sized_recipe(recipe, stage_dir: Path):
    """``recipe`` with the student params the size stage chose (stepped down by ``--refit``); unchanged when the
    recipe does not fit the student or the stage has not sized it yet."""
    if recipe.student.size != "fit":
        return recipe
    params = sized_params(stage_dir)
    return recipe if params is None else dataclasses.replace(recipe, student=dataclasses.replace(recipe.student,
                                                                                                 params=params))


def _position(stage_dir: Path) -> Optional[tuple[dict, list[dict], int, int]]:
    """``(sizing, fitting candidates, index of the one to train, refit steps)``; None when the stage did not size."""
    path = Path(stage_dir) / SIZING_FILE
    if not path.exists():
        return None
    sizing = _io.read_json(path)
    fitting = [c for c in sizing["candidates"] if c.get("within_budget")]
    refit = Path(stage_dir) / REFIT_FILE
    steps = int(_io.read_json(refit).get("steps_down", 0)) if refit.exists() else 0
    chosen = next(i for i, c in enumerate(fitting) if c["knobs"] == sizing["chosen"]["knobs"])
    return sizing, fitting, min(chosen + steps, len(fitting) - 1), steps


def sized_params(stage_dir: Path) -> Optional[dict]:
    """The student params the size stage chose (stepped down by ``--refit``), or None when it did not size."""
    found = _position(stage_dir)
    return None if found is None else found[1][found[2]]["params"]


def sizing_record(stage_dir: Path) -> Optional[dict]:
    """What ``report.json`` says of the sizing: the stage's record, the candidate trained (after ``--refit``
    steps) and the next fitting one down from it (what ``--refit`` would train)."""
    found = _position(stage_dir)
    if found is None:
        return None
    sizing, fitting, at, steps = found
    return {**sizing, "trained": _summary(fitting[at]), "refit_steps": steps,
            "next_down": _summary(fitting[at + 1]) if at + 1 < len(fitting) else None}


def step_down(stage_dir: Path) -> dict:
    """``run --refit``: train the next fitting candidate down from the one the last run trained; returns it."""
    found = _position(stage_dir)
    if found is None:
        raise ConfigError(f"--refit: {Path(stage_dir) / SIZING_FILE} does not exist; --refit follows a run with "
                          "student.size = \"fit\".")
    _, fitting, at, steps = found
    if at + 1 >= len(fitting):
        raise ConfigError(f"--refit: {knob_text(fitting[at]['knobs'])} is already the smallest candidate measured within the "
                          "budgets; raise the budget or add smaller values to the family's search space.")
    _io.write_json(Path(stage_dir) / REFIT_FILE, {"steps_down": steps + 1, "from": fitting[at]["knobs"],
                                                 "to": fitting[at + 1]["knobs"]})
    return fitting[at + 1]
