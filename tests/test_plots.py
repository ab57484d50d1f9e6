import base64
import json
import re
from pathlib import Path

import pytest

from edgedistill.errors import DataError
from edgedistill.plots import curves_figure, plot_report, read_curves, render_html, scatter_figure

FIX = Path(__file__).parent / "fixtures"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def report():
    return json.loads((FIX / "report_sample.json").read_text())


def test_plot_report_writes_pngs(report, tmp_path):
    paths = plot_report(report, tmp_path, curves_csv=str(FIX / "curves_sample.csv"))
    assert [p.name for p in paths] == ["metric_vs_size.png", "metric_vs_p90.png", "curves.png"]
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    assert [p.name for p in plot_report(report, tmp_path / "b")] == ["metric_vs_size.png", "metric_vs_p90.png"]


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
    assert {t.get_text() for t in ax.texts} == {"teacher", "student_fp32", "student_int8"}


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
    pngs = plot_report(report, tmp_path, curves_csv=str(FIX / "curves_sample.csv"))
    out = render_html(report, pngs, tmp_path / "report.html")
    text = out.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing fetched from a network
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(imgs) == 3
    assert [base64.b64decode(i) for i in imgs] == [p.read_bytes() for p in pngs]
    assert "AMD EPYC &lt;script&gt;" in text and "<script>" not in text  # escaped
    assert text.count("<tr") == 4  # header + three models
    assert '<tr class="deliverable"><td>student_int8</td>' in text
    assert "size 2.400 MB &gt; 0.5 MB; p90 1.100 ms &gt; 0.2 ms" in text
    assert "not the target device" in text


def test_report_missing_keys_are_data_errors(report, tmp_path):
    del report["models"][1]["latency_ms"]
    with pytest.raises(DataError, match=r"report\.models\[1\]: the 'latency_ms' key is missing"):
        plot_report(report, tmp_path)
    with pytest.raises(DataError, match=r"report: the 'target' key is missing"):
        render_html({"models": []}, [], tmp_path / "r.html")
    junk = tmp_path / "x.png"
    junk.write_bytes(b"GIF89a")
    with pytest.raises(DataError, match=r"x\.png: not a PNG file"):
        render_html({"target": {"name": "t"}, "models": []}, [junk], tmp_path / "r.html")
