"""One budget check (`judge`, `misses`) and one deliverable rule (`choose_deliverable`), on model records shaped
as the bench and the report write them."""

import pytest

from edgedistill.budgets import choose_deliverable, judge, misses
from edgedistill.errors import StageError
from edgedistill.targets import Budgets


def _model(name, value, size_mb, p90, precision="int8", role="student", rss=50.0):
    return {"name": name, "role": role, "precision": precision, "metric": {"name": "accuracy", "value": value},
            "size_mb": size_mb, "latency_ms": {"p50": p90, "p90": p90, "p99": p90, "mean": p90}, "peak_rss_mb": rss}


MODELS = [
    _model("teacher", 0.990, 9.00, 9.0, "fp32", "teacher"),  # never a candidate
    _model("fp32", 0.910, 1.00, 3.0, "fp32"),
    _model("ptq", 0.900, 0.27, 1.00),
    _model("qat", 0.908, 0.26, 1.02),
]


def test_judge_gives_limit_measured_and_margin_per_budget_set():
    v = judge(_model("m", 0.8, 1.5, 2.5, rss=30.0), Budgets(size_mb=2.0, p90_ms=2.0, peak_ram_mb=100.0, min_metric=0.9))
    assert v["size_mb"] == {"limit": 2.0, "measured": 1.5, "ok": True, "margin": 0.5, "margin_pct": 25.0}
    assert v["p90_ms"]["ok"] is False and v["p90_ms"]["margin"] == -0.5 and v["p90_ms"]["margin_pct"] == -25.0
    assert v["peak_ram_mb"]["ok"] is True
    assert v["min_metric"]["ok"] is False and v["min_metric"]["margin"] == pytest.approx(-0.1)  # a floor
    assert misses(v, "accuracy") == ["p90 2.500 ms > budget 2 ms", "accuracy 0.8000 < min_metric 0.9"]
    assert "p90_ms" not in judge(_model("m", 0.8, 1.5, 2.5), Budgets(size_mb=2.0))  # unset budgets are not judged


def test_judge_without_a_metric_or_a_memory_figure():
    bench_record = {"size_mb": 1.0, "latency_ms": {"p90": 1.0}, "peak_rss_mb": None}  # what bench measures
    v = judge(bench_record, Budgets(size_mb=2.0, peak_ram_mb=10.0, min_metric=0.5))
    assert "min_metric" not in v and v["peak_ram_mb"]["ok"] is None and "not measurable" in v["peak_ram_mb"]["note"]
    assert misses(v) == []


def test_deliverable_is_fastest_then_smallest_within_tolerance():
    name, reason = choose_deliverable(MODELS, Budgets(size_mb=2.0, p90_ms=5.0), tolerance=0.5)
    assert name == "qat"  # ptq is 1.0 point below fp32; qat ties ptq on speed (within 5 %) and is smaller
    assert "ptq (accuracy drop 1.00 points > tolerance 0.5)" in reason and "teacher" not in reason


def test_deliverable_favouring_size_is_smallest_then_fastest():
    models = [MODELS[1], _model("ptq", 0.908, 0.20, 1.50), MODELS[3]]
    assert choose_deliverable(models, Budgets(size_mb=2.0, p90_ms=5.0), 0.5)[0] == "qat"  # latency: the faster
    name, reason = choose_deliverable(models, Budgets(size_mb=2.0, p90_ms=5.0), 0.5, favour="size")
    assert name == "ptq" and "smallest-then-fastest such candidate ([report] favour = \"size\")" in reason
    assert "qat (larger or slower)" in reason
    tie = [MODELS[1], _model("ptq", 0.908, 0.26, 1.50), _model("qat", 0.908, 0.27, 1.02)]  # sizes within 5 %: p90 decides
    assert choose_deliverable(tie, Budgets(size_mb=2.0), 0.5, favour="size")[0] == "qat"


def test_deliverable_reason_names_the_favour_and_unknown_favours_are_refused():
    _, reason = choose_deliverable(MODELS, Budgets(size_mb=2.0, p90_ms=5.0), tolerance=0.5)
    assert "fastest-then-smallest such candidate ([report] favour = \"latency\")" in reason
    with pytest.raises(StageError, match=r"favour 'speed' is unknown; use one of: latency, size"):
        choose_deliverable(MODELS, Budgets(), 0.5, favour="speed")


def test_deliverable_prefers_a_qualifying_int8_over_a_faster_fp32_reference():
    models = [_model("fp32", 0.910, 1.00, 0.5, "fp32"), MODELS[3]]
    name, reason = choose_deliverable(models, Budgets(size_mb=2.0, p90_ms=5.0), tolerance=0.5)
    assert name == "qat" and "fp32 (the FP32 reference, delivered only when no compressed candidate qualifies)" in reason


def test_deliverable_falls_back_to_fp32_when_int8_misses_tolerance():
    assert choose_deliverable(MODELS, Budgets(size_mb=2.0), tolerance=0.1)[0] == "fp32"


def test_deliverable_reports_what_nothing_meets():
    name, reason = choose_deliverable(MODELS, Budgets(size_mb=0.1), tolerance=0.5)
    assert name == "fp32" and reason.startswith("no candidate meets") and "size 1.000 MB > budget 0.1 MB" in reason


def test_deliverable_judges_memory_and_min_metric_with_the_same_check():
    models = [MODELS[1], _model("ptq", 0.909, 0.27, 1.0, rss=500.0), MODELS[3]]
    name, reason = choose_deliverable(models, Budgets(size_mb=2.0, peak_ram_mb=100.0, min_metric=0.5), 0.5)
    assert name == "qat" and "ptq (peak RSS 500.0 MB > budget 100 MB)" in reason


def test_deliverable_rejects_unmeasured_models_and_needs_a_student():
    with pytest.raises(StageError, match="lacks latency_ms"):
        choose_deliverable([{"name": "qat", "metric": {"name": "accuracy", "value": 0.9}, "size_mb": 1.0}], Budgets(), 0.5)
    with pytest.raises(StageError, match="no student model"):
        choose_deliverable([MODELS[0]], Budgets(), 0.5)


def test_an_indicative_p90_verdict_is_kept_but_never_gates():
    budgets = Budgets(size_mb=1.0, p90_ms=2.0)
    v = judge(_model("m", 0.8, 1.5, 2.5), budgets, latency_indicative=True)
    assert v["p90_ms"]["ok"] is False and v["p90_ms"]["indicative"] is True and "not the target" in v["p90_ms"]["note"]
    assert misses(v) == ["size 1.500 MB > budget 1 MB"]  # size still gates
    assert misses(v, indicative=True) == ["p90 2.500 ms > budget 2 ms"]
    assert "indicative" not in judge(_model("m", 0.8, 1.5, 2.5), budgets)["p90_ms"]
    # a student over the p90 budget is delivered when the latency was measured off the target, not otherwise
    slow = [_model("fp32", 0.91, 0.5, 9.0, "fp32"), _model("int8", 0.91, 0.2, 9.0)]
    assert choose_deliverable(slow, Budgets(size_mb=1.0, p90_ms=2.0), 1.0)[1].startswith("no candidate meets")
    name, reason = choose_deliverable(slow, Budgets(size_mb=1.0, p90_ms=2.0), 1.0, latency_indicative=True)
    assert name == "int8" and "meets every budget" in reason
