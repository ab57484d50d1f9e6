"""One budget check and one deliverable rule, for the bench, the report and the CLI alike.

A *model record* is what the bench measures of an ONNX file, ``{"size_mb", "latency_ms": {"p90", ...},
"peak_rss_mb"}``, plus, once verified, ``"metric": {"name", "value"}`` and, in a report, ``"name"``,
``"role"`` (teacher or student) and ``"precision"`` (fp32 or int8). :func:`judge` weighs one record against
a target's budgets; :func:`misses` says in words what it missed; :func:`choose_deliverable` picks, among the
students of a report, the model the run delivers. Imports no torch (the bench runs on boards).
"""

from __future__ import annotations

from .errors import StageError

TIE_FRACTION = 0.05  # two p90s (or sizes) within 5 % of each other count as a tie
FAVOURS = {  # [report] favour -> (minimised first, the tie-breaker, the winner in words, a loser in words)
    "latency": ("p90_ms", "size_mb", "fastest-then-smallest", "slower or larger"),
    "size": ("size_mb", "p90_ms", "smallest-then-fastest", "larger or slower"),
}
_UNITS = {"size_mb": ("size", "MB", ".3f"), "p90_ms": ("p90", "ms", ".3f"), "peak_ram_mb": ("peak RSS", "MB", ".1f")}


INDICATIVE_NOTE = "measured on a host that is not the target: indicative, does not gate"


def judge(model: dict, budgets, latency_indicative: bool = False) -> dict:
    """Per budget of ``budgets`` (a :class:`edgedistill.targets.Budgets`) that is set: ``{limit, measured, ok,
    margin, margin_pct}``; ``margin`` is how far inside the budget (negative: missed by). ``min_metric`` is judged
    only when the record carries a metric. A figure this OS cannot measure gets ``ok: None`` and a note.
    ``latency_indicative`` (the latency was measured off the target) marks the p90 verdict ``indicative: True``:
    :func:`misses`, and so every gate, leaves it out; size and RAM still gate."""
    metric = model.get("metric")
    checks = [("size_mb", budgets.size_mb, model["size_mb"], 1), ("p90_ms", budgets.p90_ms, model["latency_ms"]["p90"], 1),
              ("peak_ram_mb", budgets.peak_ram_mb, model.get("peak_rss_mb"), 1)]
    if metric is not None:
        checks.append(("min_metric", budgets.min_metric, metric["value"], -1))  # a floor: higher is better
    out = {}
    for key, limit, measured, sign in checks:
        if limit is None:
            continue
        if measured is None:
            out[key] = {"limit": limit, "measured": None, "ok": None, "note": "not measurable on this OS"}
            continue
        margin = sign * (limit - measured)
        out[key] = {"limit": limit, "measured": round(measured, 4), "ok": margin >= 0, "margin": round(margin, 4),
                    "margin_pct": round(100 * margin / abs(limit), 2) if limit else None}
        if key == "p90_ms" and latency_indicative:
            out[key].update(indicative=True, note=INDICATIVE_NOTE)
    return out


def misses(verdict: dict, metric_name: str = "metric", indicative: bool = False) -> list[str]:
    """The budgets a :func:`judge` verdict misses, one phrase each, e.g. ``"p90 3.100 ms > budget 2 ms"``: those
    that gate, or with ``indicative=True`` only the indicative ones (which never gate)."""
    out = []
    for key, v in verdict.items():
        if v["ok"] is not False or bool(v.get("indicative")) != indicative:
            continue
        if key == "min_metric":
            out.append(f"{metric_name} {v['measured']:.4f} < min_metric {v['limit']:g}")
        else:
            what, unit, fmt = _UNITS[key]
            out.append(f"{what} {format(v['measured'], fmt)} {unit} > budget {v['limit']:g} {unit}")
    return out


def choose_deliverable(models: list[dict], budgets, tolerance: float, favour: str = "latency",
                       latency_indicative: bool = False) -> tuple[str, str]:
    """The student the run delivers, and why.

    Candidates are the ``role == "student"`` records of ``models``; the FP32 student is the reference whose
    metric the ``tolerance`` (points) is measured from, and is delivered only when no compressed student
    qualifies. Among those within every budget and the tolerance, ``favour`` decides: ``"latency"`` the
    fastest p90, ``"size"`` the smallest file; values within :data:`TIE_FRACTION` tie, broken by the other
    figure, then by the metric. When none qualifies, the most accurate one within budget is delivered (or
    the most accurate overall) and the reason says what it misses. With ``latency_indicative`` a missed p90
    budget does not disqualify (:func:`judge`); favour = "latency" still ranks by the measured p90.
    """
    if favour not in FAVOURS:
        raise StageError(f"choose_deliverable: favour {favour!r} is unknown; use one of: {', '.join(FAVOURS)}.")
    students = [m for m in models if m.get("role", "student") == "student"]
    if not students:
        raise StageError("choose_deliverable: no student model to deliver; run export (and ptq or qat) first.")
    for m in students:
        missing = [k for k in ("name", "metric", "size_mb", "latency_ms") if m.get(k) is None]
        if missing:
            raise StageError(f"choose_deliverable: model {m.get('name', '?')!r} lacks {', '.join(missing)}; "
                             "benchmark and verify every model first.")
    refs = [m for m in students if m.get("precision") == "fp32"] or students
    ref = max(refs, key=_value)
    label = ref["metric"]["name"]
    why = {m["name"]: _tolerance_miss(m, ref, tolerance, label) + misses(judge(m, budgets, latency_indicative), label)
           for m in students}

    reference = ref if ref.get("precision") == "fp32" else None  # delivered only when nothing compressed qualifies
    eligible = [m for m in students if not why[m["name"]] and m is not reference] or \
        [m for m in students if not why[m["name"]]]
    if eligible:
        first, then, words, loser = FAVOURS[favour]
        lowest = min(_figure(m, first) for m in eligible)
        near = [m for m in eligible if _figure(m, first) <= lowest * (1 + TIE_FRACTION)]
        best = min(near, key=lambda m: (_figure(m, then), -_value(m)))
        others = ", ".join(f"{m['name']} ({'; '.join(why[m['name']]) or _not_chosen(m, reference, loser)})"
                           for m in students if m is not best)
        return best["name"], (
            f"{best['name']} meets every budget and is within {tolerance:g} points of {ref['name']} ({label} "
            f"{_value(best):.4f}, {best['size_mb']:.3f} MB, p90 {_figure(best, 'p90_ms'):.3f} ms), and is the {words} "
            f"such candidate ([report] favour = \"{favour}\"); not chosen: {others or 'none'}.")
    # within the hardware budgets (size, p90, memory): min_metric and the tolerance are what "most accurate" weighs
    fitting = [m for m in students if all(v["ok"] is not False or v.get("indicative")
                                          for k, v in judge(m, budgets, latency_indicative).items() if k != "min_metric")]
    best = max(fitting or students, key=lambda m: (_value(m), -_figure(m, "p90_ms")))
    return best["name"], (
        f"no candidate meets both the budgets and the {tolerance:g}-point tolerance; {best['name']} is the most "
        f"accurate {'of those within budget' if fitting else 'overall'}, and it misses: "
        f"{'; '.join(why[best['name']]) or 'nothing'}.")


def _value(m: dict) -> float:
    return m["metric"]["value"]


def _figure(m: dict, key: str) -> float:
    return m["latency_ms"]["p90"] if key == "p90_ms" else m[key]


def _tolerance_miss(m: dict, ref: dict, tolerance: float, label: str) -> list[str]:
    drop = (_value(ref) - _value(m)) * 100
    return [f"{label} drop {drop:.2f} points > tolerance {tolerance:g}"] if drop > tolerance + 1e-9 else []


def _not_chosen(m: dict, reference: dict | None, loser: str) -> str:
    return "the FP32 reference, delivered only when no compressed candidate qualifies" if m is reference else loser
