"""Choose the deliverable among the candidate artifacts (FP32, PTQ INT8, QAT INT8...)."""

from __future__ import annotations

from ..errors import StageError

TIE_FRACTION = 0.05  # two p90s (or sizes) within 5 % of each other count as a tie
FAVOURS = {  # [report] favour -> (minimised first, the tie-breaker, the winner in words, a loser in words)
    "latency": ("p90_ms", "size_mb", "fastest-then-smallest", "slower or larger"),
    "size": ("size_mb", "p90_ms", "smallest-then-fastest", "larger or slower"),
}


def choose_deliverable(candidates: list[dict], budgets, tolerance: float,
                       favour: str = "latency") -> tuple[str, str]:
    """The compressed candidate that meets the budgets and the accuracy tolerance and best serves ``favour``, and why.

    Each candidate is ``{"name", "accuracy" (fraction), "size_mb", "p90_ms"}`` plus optional
    ``"peak_ram_mb"`` and ``"reference": True`` for the FP32 model whose accuracy the tolerance
    (percentage points) is measured from (without one, the most accurate candidate is the reference).
    ``budgets`` is a :class:`edgedistill.targets.Budgets`. Among the eligible candidates the fastest
    p90 wins; p90s within 5 % of each other count as a tie, broken by the smaller file, then by accuracy.
    When none is eligible, the most accurate candidate that fits the budgets is returned (or the most
    accurate one overall) and the reason says what was missed. The reference itself is chosen only
    when no other candidate is eligible.
    """
    if favour not in FAVOURS:
        raise StageError(f"choose_deliverable: favour {favour!r} is unknown; use one of: {', '.join(FAVOURS)}.")
    if not candidates:
        raise StageError("choose_deliverable: no candidate artifacts; run export (and ptq or qat) first.")
    for c in candidates:
        missing = [k for k in ("name", "accuracy", "size_mb", "p90_ms") if c.get(k) is None]
        if missing:
            raise StageError(f"choose_deliverable: candidate {c.get('name', '?')!r} lacks {', '.join(missing)}; "
                             "benchmark and verify every artifact first.")
    refs = [c for c in candidates if c.get("reference")] or candidates
    ref = max(refs, key=lambda c: c["accuracy"])
    label = ref.get("metric_name", "accuracy")  # the task's metric (accuracy, Spearman...), named in the reasons

    def misses(c: dict) -> list[str]:
        out = []
        drop = (ref["accuracy"] - c["accuracy"]) * 100
        if drop > tolerance + 1e-9:
            out.append(f"{label} drop {drop:.2f} points > tolerance {tolerance:g}")
        if c["size_mb"] > budgets.size_mb:
            out.append(f"size {c['size_mb']:.3f} MB > budget {budgets.size_mb:g} MB")
        if budgets.p90_ms is not None and c["p90_ms"] > budgets.p90_ms:
            out.append(f"p90 {c['p90_ms']:.3f} ms > budget {budgets.p90_ms:g} ms")
        if budgets.peak_ram_mb is not None and c.get("peak_ram_mb") is not None and c["peak_ram_mb"] > budgets.peak_ram_mb:
            out.append(f"peak RAM {c['peak_ram_mb']:.1f} MB > budget {budgets.peak_ram_mb:g} MB")
        if budgets.min_metric is not None and c["accuracy"] < budgets.min_metric:
            out.append(f"{label} {c['accuracy']:.4f} < min_metric {budgets.min_metric:g}")
        return out

    # The FP32 reference is what the tolerance is measured from; it is delivered only when no
    # compressed candidate qualifies (the pipeline's promise is an INT8 model as good as its FP32 self).
    eligible = [c for c in candidates if not misses(c) and not c.get("reference")] or \
        [c for c in candidates if not misses(c)]
    if eligible:
        first, then, words, loser = FAVOURS[favour]
        lowest = min(c[first] for c in eligible)
        near = [c for c in eligible if c[first] <= lowest * (1 + TIE_FRACTION)]
        best = min(near, key=lambda c: (c[then], -c["accuracy"]))
        def why_not(c: dict) -> str:
            if misses(c):
                return "; ".join(misses(c))
            return "the FP32 reference, delivered only when no compressed candidate qualifies" if c.get("reference") \
                else loser

        others = ", ".join(f"{c['name']} ({why_not(c)})" for c in candidates if c is not best)
        reason = (f"{best['name']} meets every budget and is within {tolerance:g} points of {ref['name']} "
                  f"({label} {best['accuracy']:.4f}, {best['size_mb']:.3f} MB, p90 {best['p90_ms']:.3f} ms), and is the "
                  f"{words} such candidate ([report] favour = \"{favour}\"); not chosen: {others or 'none'}.")
        return best["name"], reason
    fitting = [c for c in candidates if not [m for m in misses(c) if not m.startswith(label)]]
    pool = fitting or candidates
    best = max(pool, key=lambda c: (c["accuracy"], -c["p90_ms"]))
    reason = (f"no candidate meets both the budgets and the {tolerance:g}-point tolerance; {best['name']} is the most "
              f"accurate {'of those within budget' if fitting else 'overall'}, and it misses: "
              f"{'; '.join(misses(best)) or 'nothing'}.")
    return best["name"], reason
