"""What the report concludes (comparisons with the teacher, warnings, the deliverable's favour) is computed
once into report.json, and report.md and report.html say the same."""

import dataclasses
import html
import json
from pathlib import Path

import pytest

from edgedistill.report import STUDENT_GAP_POINTS, add_findings, build_report, compare_with_teacher
from edgedistill.report_render import comparisons_table, machine_line, models_table, render_html, render_markdown
from edgedistill.targets import Budgets, load_target

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture
def sample():
    return json.loads((FIX / "report_sample.json").read_text())


def _far_and_slow(report):
    """The users' case: the student 19 points below its teacher, the INT8 model 2.5x slower at p90 than FP32."""
    teacher, fp32, int8 = report["models"]
    fp32["metric"]["value"], int8["metric"]["value"] = 0.795, 0.790
    int8["latency_ms"]["p90"] = 0.375  # 2.5 x 0.15
    return add_findings(report)


def test_comparisons_against_the_teacher(sample):
    fp32, int8 = compare_with_teacher(sample["models"])
    assert fp32 == {"name": "student_fp32", "precision": "fp32", "teacher": "teacher", "metric": "accuracy",
                    "value": 0.972, "teacher_value": 0.985, "smaller_x": 7.74, "faster_p90_x": 7.33, "points_lost": 1.3}
    assert (int8["smaller_x"], int8["faster_p90_x"], int8["points_lost"]) == (26.67, 12.22, 1.6)
    assert compare_with_teacher(sample["models"][1:]) == []  # no teacher, nothing to compare with


def test_comparison_cells_say_larger_or_slower_below_1x(sample):
    sample["models"][2]["size_mb"], sample["models"][2]["latency_ms"]["p90"] = 4.8, 2.2
    header, rows = comparisons_table(add_findings(sample))
    assert header[-1] == "accuracy points lost"
    assert rows[1] == ["student_int8", "int8", "2.0x larger", "2.0x slower", "1.6"]


def test_warnings_name_a_far_student_a_slow_int8_and_a_foreign_host(sample):
    warnings = _far_and_slow(sample)["warnings"]
    assert warnings == [
        "The student is far below its teacher teacher (accuracy 0.9850): student_fp32 by 19.0 (0.7950), student_int8 "
        f"by 19.5 (0.7900) accuracy points, more than the {STUDENT_GAP_POINTS:g}-point warning threshold; train the "
        "student longer, make it wider, or try another distillation loss.",
        "INT8 is slower at p90 than the FP32 student student_fp32 (0.150 ms) on this host: student_int8 2.50x slower "
        "(0.375 ms). Here quantization buys a smaller file, not speed: an INT8 part of an ONNX Runtime graph pays a "
        "quantize and a layout transpose where it starts and the reverse where it ends (about a microsecond each), "
        "which layers of a few microseconds do not win back, and ORT's INT8 depthwise and few-channel convolutions "
        "are slower than its FP32 ones (ptq.speed_rules keeps those in FP32; docs/quantization.md). INT8 pays off on "
        "CPUs with fast INT8 instructions (AVX-512 VNNI, Arm dot-product) and larger layers.",
        "The benchmark ran on this machine (x86_64, 2 cores), not on the target laptop-x86 (x86_64, 4 cores): "
        "latency and memory are that machine's, unscaled; run `edgedistill bench` on the device itself (or name it "
        "as the target's `remote`) for its figures.",
    ]


def test_a_bench_over_ssh_is_named_in_the_warning_and_the_machine_line(sample):
    sample["remote"] = {"host": "pi@board:2222", "python": "3.11.2", "edgedistill": "0.1.0"}
    assert add_findings(sample)["warnings"][-1].startswith(
        "The benchmark ran on the remote pi@board:2222 (x86_64, 2 cores), not on the target laptop-x86")
    assert machine_line(sample).startswith("Measured over SSH on pi@board:2222 on ")


def test_no_warning_within_the_thresholds(sample):
    teacher, fp32, int8 = sample["models"]
    fp32["metric"]["value"] = teacher["metric"]["value"] - STUDENT_GAP_POINTS / 100  # exactly at the threshold
    int8["latency_ms"]["p90"] = fp32["latency_ms"]["p90"] * 1.04  # within the 5 % the deliverable counts as a tie
    sample["machine"]["cores"] = 4  # the target's architecture and cores
    assert add_findings(sample)["warnings"] == []


@pytest.mark.parametrize("agreement, warned", [(0.78, True), (0.99, False)])
def test_a_default_session_that_saturates_names_the_session_config(sample, agreement, warned):
    """x86 without VNNI: ONNX Runtime's default session against the file; the INT8 slower warning says why too."""
    teacher, fp32, int8 = sample["models"]
    sample["machine"]["cores"] = 4
    int8["latency_ms"]["p90"] = fp32["latency_ms"]["p90"] * 1.5
    sample["int8_kernels"] = {"samples": 128, "top1_agreement": 1.0, "output_sqnr_db": 41.0, "isa": {"avx2": True},
                              "default_session": {"top1_agreement": agreement, "output_sqnr_db": 9.1,
                                                  "top1_agreement_with_precise": agreement}}
    slower, *rest = add_findings(sample)["warnings"]
    assert slower.startswith("INT8 is slower at p90") and ("exact U8U8 kernels it asks for" in slower) == warned
    assert len(rest) == warned
    if warned:
        assert rest[0].startswith("ONNX Runtime's default session on this x86 CPU without VNNI changes the PTQ file's "
                                  "top-1 on 22.0 % of 128 calibration samples")
        assert "session.x64quantprecision = 1" in rest[0] and "ptq.reduce_range = true" in rest[0]


def test_host_warning_without_architectures_falls_back_on_the_bench_verdict(sample):
    del sample["machine"]["architecture"]
    assert add_findings(sample)["warnings"][-1].startswith("The benchmark ran on this machine, not on the target")
    sample["host_matches_target"] = True
    assert add_findings(sample)["warnings"] == []


def test_json_markdown_and_html_say_the_same(sample, tmp_path):
    report = _far_and_slow(sample)
    md = render_markdown(report)
    page = html.unescape(render_html(report, [], tmp_path / "report.html").read_text())
    for text in (md, page):
        assert "Deliverable: **student_int8**" in text or "Deliverable: <b>student_int8</b>" in text
        assert f"Why: {report['deliverable_reason']}" in text
        assert all(w in text for w in report["warnings"]) and len(report["warnings"]) == 3
    for row in comparisons_table(report)[1]:
        assert "| " + " | ".join(row) + " |" in md
        assert "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" in page
    assert "## Against the teacher (teacher)" in md and "<h2>Against the teacher (teacher)</h2>" in page


MODELS = {"teacher_fp32": ("teacher", "fp32"), "student_fp32": ("student", "fp32"), "student_int8": ("student", "int8"),
          "student_qat_int8": ("student", "int8")}


def _inputs(root: Path, figures: dict):
    """verify's metrics, bench's output and the models' (path, role, precision) for models with the given
    (accuracy, size MB, p90 ms)."""
    models = {n: (root / "stage" / f"{n}.onnx", *MODELS[n]) for n in figures}
    metrics = {n: {"metric": {"name": "accuracy", "value": acc}} for n, (acc, _, _) in figures.items()}
    bench = {"models": [{"path": str(models[n][0]), "size_mb": size, "peak_rss_mb": 60.0,
                         "latency_ms": {"p50": p90, "p90": p90, "p99": p90, "mean": p90}}
                        for n, (_, size, p90) in figures.items()],
             "machine": {"architecture": "x86_64", "cores": 4}, "host_matches_target": True}
    return metrics, bench, models


@pytest.mark.parametrize("favour, chosen", [("latency", "student_int8"), ("size", "student_qat_int8")])
def test_build_report_delivers_what_the_favour_asks(tmp_path, favour, chosen):
    root = tmp_path.resolve()
    metrics, bench, models = _inputs(root, {"teacher_fp32": (0.99, 4.0, 2.0), "student_fp32": (0.97, 1.0, 1.0),
                                    "student_int8": (0.968, 0.30, 0.40), "student_qat_int8": (0.969, 0.25, 0.60)})
    target = dataclasses.replace(load_target("laptop-x86"), budgets=Budgets(size_mb=2.0, p90_ms=5.0))
    report = build_report(target, metrics, bench, models, root, tolerance=1.0, favour=favour)
    assert report["deliverable"] == chosen and report["favour"] == favour
    assert f'([report] favour = "{favour}")' in report["deliverable_reason"]
    assert report["target"] | {"budgets": None} == {"name": "laptop-x86", "architecture": "x86_64", "cores": 4,
                                                     "budgets": None, "runtime": "onnxruntime"}
    assert [c["name"] for c in report["comparisons"]] == ["student_fp32", "student_int8", "student_qat_int8"]
    assert report["warnings"] == []  # 2 points below the teacher, INT8 faster, measured on the target's hardware


def test_a_latency_measured_off_the_target_is_indicative_in_the_report(tmp_path):
    root = tmp_path.resolve()
    metrics, bench, models = _inputs(root, {"teacher_fp32": (0.99, 4.0, 2.0), "student_fp32": (0.97, 1.0, 9.0),
                                            "student_int8": (0.968, 0.30, 8.0)})
    bench.update(machine={"architecture": "x86_64", "cores": 2}, host_matches_target=False, latency_indicative=True)
    target = dataclasses.replace(load_target("laptop-x86"), budgets=Budgets(size_mb=2.0, p90_ms=5.0))
    report = build_report(target, metrics, bench, models, root)
    int8 = next(m for m in report["models"] if m["name"] == "student_int8")
    assert report["latency_indicative"] is True and report["deliverable"] == "student_int8"
    assert int8["within_budget"] is True and int8["violations"] == []
    assert int8["indicative_misses"] == ["p90 8.000 ms > budget 5 ms"] and int8["verdict"]["p90_ms"]["indicative"]
    assert report["warnings"][-1].endswith("The p90 verdicts are indicative: they do not gate (size and RAM still do).")
    assert "within budget; p90 8.000 ms > budget 5 ms (indicative)" in render_markdown(report)
    assert "p90 (ms)" in models_table(report)[0]  # no interval measured, none shown
    bench["latency_indicative"] = False  # measured on the target: the same p90 gates
    bench["models"][2]["latency_ms"]["ci95"] = {"p50": [7.9, 8.1], "p90": [7.95, 8.12345]}
    report = build_report(target, metrics, bench, models, root)
    int8 = next(m for m in report["models"] if m["name"] == "student_int8")
    assert not int8["within_budget"] and int8["latency_ms"]["ci95"]["p90"] == [7.95, 8.1235]
    header, rows = models_table(report)
    assert header[7] == "p90 (ms) [95% CI]" and rows[2][7] == "8.0000 [7.9500, 8.1235]" and rows[2][3] == "ONNX Runtime"
