import base64
import json
import re
from pathlib import Path

import pytest

from edgedistill.errors import DataError
from edgedistill.plots import curves_figure, has_curves, plot_report, read_curves, scatter_figure
from edgedistill.report_render import render_html
from edgedistill.report import add_findings

FIX = Path(__file__).parent / "fixtures"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def report():
    return add_findings(json.loads((FIX / "report_sample.json").read_text()))


def _stage_curves(tmp_path):
    """Every training stage's curves file as the stages leave them: two trained, one header-only, one absent."""
    empty = tmp_path / "distill_curves.csv"
    empty.write_text("\r\n")  # what distill.epochs = 0 writes
    return {"teacher": FIX / "curves_sample.csv", "distill": empty, "qat_observe": FIX / "curves_sample.csv",
            "qat_frozen": tmp_path / "absent.csv"}


def test_plot_report_writes_a_curves_png_per_trained_stage(report, tmp_path):
    paths = plot_report(report, tmp_path, curves=_stage_curves(tmp_path))
    assert [p.name for p in paths] == ["metric_vs_size.png", "metric_vs_p90.png", "curves_teacher.png",
                                       "curves_qat_observe.png"]
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    assert [p.name for p in plot_report(report, tmp_path / "b")] == ["metric_vs_size.png", "metric_vs_p90.png"]


def test_has_curves_needs_a_row(tmp_path):
    (tmp_path / "h.csv").write_text("epoch,loss_kd\n")
    (tmp_path / "r.csv").write_text("epoch,loss_kd\n1,0.5\n")
    assert [has_curves(tmp_path / n) for n in ("h.csv", "r.csv", "none.csv")] == [False, True, False]


def test_curves_figure_is_titled_by_stage():
    fig = curves_figure(read_curves(FIX / "curves_sample.csv"), title="teacher training curves")
    assert fig.get_suptitle() == "teacher training curves"


@pytest.mark.parametrize("x, budget, xget", [("size", 0.5, lambda m: m["size_mb"]),
                                              ("p90", 0.2, lambda m: m["latency_ms"]["p90"])])
def test_scatter_has_every_model_budget_lines_and_deliverable(report, x, budget, xget):
    ax = scatter_figure(report, x).axes[0]
    points = {tuple(map(float, c.get_offsets()[0])) for c in ax.collections if len(c.get_offsets())}
    for m in report["models"]:
        assert (xget(m), m["metric"]["value"]) in points
    vlines = [ln for ln in ax.lines if ln.get_label().startswith("budget")]
    assert len(vlines) == 1 and list(vlines[0].get_xdata()) == [budget, budget]
    hlines = [ln for ln in ax.lines if ln.get_label().startswith("min metric")]
    assert list(hlines[0].get_ydata()) == [0.9, 0.9]
    ring = [c for c in ax.collections if c.get_label() == "deliverable: student_int8"]
    assert len(ring) == 1 and tuple(ring[0].get_offsets()[0]) == (xget(report["models"][2]), 0.969)
    assert not ax.texts  # models are named in the legend, never by text next to a point
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:3] == ["teacher (FP32)", "student_fp32 (FP32)", "student_int8 (INT8)"]
    assert f"budget {budget:g} {'MB' if x == 'size' else 'ms'}" in legend


def _clump(report):
    """Four models within a hair of each other, with long names: the case where text labels used to pile up."""
    base = report["models"][1]
    names = ["student_fp32_with_a_long_name", "student_int8_with_a_long_name", "student_qat_int8_with_a_long_name"]
    report["models"] = report["models"][:1] + [
        {**base, "name": n, "precision": "int8" if "int8" in n else "fp32", "size_mb": 0.31 + 0.001 * i,
         "metric": {"name": "accuracy", "value": 0.972 - 0.0005 * i},
         "latency_ms": {**base["latency_ms"], "p90": 0.15 + 0.0005 * i}} for i, n in enumerate(names)]
    report["deliverable"] = names[1]
    return report


def _text_boxes(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts], renderer


@pytest.mark.parametrize("x", ["size", "p90"])
@pytest.mark.parametrize("clumped", [False, True])
def test_scatter_labels_never_overlap(report, x, clumped):
    fig = scatter_figure(_clump(report) if clumped else report, x)
    boxes, renderer = _text_boxes(fig)
    names = {t for t, _ in boxes}
    assert all(any(m["name"] in t for t in names) for m in report["models"])  # every model is named once drawn
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1:]:
            assert not a.overlaps(b), f"{ta!r} overlaps {tb!r}"
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(ax.get_window_extent(renderer))  # beside the axes: it hides no point
    assert fig.bbox.x0 <= legend.x0 and legend.x1 <= fig.bbox.x1  # and is not cut off


def test_scatter_without_optional_budgets(report):
    report["target"]["budgets"] = {"size_mb": 20.0}
    ax = scatter_figure(report, "p90").axes[0]
    assert not [ln for ln in ax.lines if ln.get_label().startswith(("budget", "min metric"))]
    assert scatter_figure(report, "size").axes[0].get_xscale() == "log"  # 0.09 .. 20 MB spans > 20x
    report["target"]["budgets"] = {"size_mb": 0.5}
    report["models"] = report["models"][1:]  # 0.09 .. 0.5 MB without the teacher
    assert scatter_figure(report, "size").axes[0].get_xscale() == "linear"


def test_curves_have_one_line_per_loss_term():
    rows = read_curves(FIX / "curves_sample.csv")
    ax_loss, ax_acc = curves_figure(rows).axes
    assert [ln.get_label() for ln in ax_loss.lines] == ["kd", "ce", "total"]
    assert list(ax_loss.lines[0].get_ydata()) == [1.9, 1.1, 0.7]
    assert [ln.get_label() for ln in ax_acc.lines] == ["train_acc", "val_acc"]


def test_bad_curves_are_data_errors(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: curves file not found"):
        read_curves(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("step,loss\n1,2\n")
    with pytest.raises(DataError, match=r"bad\.csv: no 'epoch' column or no rows"):
        read_curves(bad)
    bad.write_text("epoch,loss_kd\n1,abc\n")
    with pytest.raises(DataError, match=r"bad\.csv: a non-numeric value"):
        read_curves(bad)


def test_render_html_is_self_contained(report, tmp_path):
    pngs = plot_report(report, tmp_path, curves=_stage_curves(tmp_path))
    out = render_html(report, pngs, tmp_path / "report.html")
    text = out.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing fetched from a network
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(imgs) == 4
    assert [base64.b64decode(i) for i in imgs] == [p.read_bytes() for p in pngs]
    assert "AMD EPYC &lt;script&gt;" in text and "<script>" not in text  # escaped
    models = re.search(r'<table id="models">.*?</table>', text).group(0)
    assert models.count("<tr") == 4  # header + three models
    assert '<tr class="deliverable ok"><td>student_int8</td>' in models
    assert "size 2.400 MB &gt; 0.5 MB; p90 1.100 ms &gt; 0.2 ms" in models


def test_render_html_says_the_deliverable_why_the_comparisons_and_the_warnings(report, tmp_path):
    text = render_html(report, [], tmp_path / "report.html").read_text()
    assert "Deliverable: <b>student_int8</b>" in text
    assert "Why: student_int8 meets every budget and is the fastest-then-smallest such candidate &lt;b&gt;." in text
    comparisons = re.search(r'<table id="comparisons">.*?</table>', text).group(0)
    assert "<tr><td>student_int8</td><td>int8</td><td>26.7x smaller</td><td>12.2x faster</td><td>1.6</td>" \
        in comparisons
    assert "<li>The benchmark ran on this machine (x86_64, 2 cores), not on the target laptop-x86 (x86_64, 4 cores)" \
        in text


def test_render_html_without_warnings_says_none(report, tmp_path):
    report["warnings"] = []
    text = render_html(report, [], tmp_path / "report.html").read_text()
    assert '<h2 id="warnings">Warnings</h2>\n<p>None.</p>' in text


def test_report_missing_keys_are_data_errors(report, tmp_path):
    del report["models"][1]["latency_ms"]
    with pytest.raises(DataError, match=r"report\.models\[1\]: the 'latency_ms' key is missing"):
        plot_report(report, tmp_path)
    with pytest.raises(DataError, match=r"report: the 'target' key is missing"):
        render_html({"models": []}, [], tmp_path / "r.html")
    with pytest.raises(DataError, match=r"report: the 'warnings' key is missing"):
        render_html({k: v for k, v in report.items() if k != "warnings"}, [], tmp_path / "r.html")
    junk = tmp_path / "x.png"
    junk.write_bytes(b"GIF89a")
    with pytest.raises(DataError, match=r"x\.png: not a PNG file"):
        render_html({"target": {"name": "t"}, "models": [], "deliverable": None, "comparisons": [], "warnings": []},
                    [junk], tmp_path / "r.html")
