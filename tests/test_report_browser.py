"""report.html in a real browser: headless Chromium renders it to a screenshot and serializes its DOM.

Skipped only where Chromium is missing (Debian package ``chromium``); ``.ci/run`` installs it, so CI runs it.
"""

import html
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from benchmarks.report_screenshot import dump_dom, find_chromium, screenshot
from edgedistill.plots import plot_report
from edgedistill.report import add_findings
from edgedistill.report_render import comparisons_table, render_html

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (Debian: apt-get install "
                                "chromium; .ci/run installs it for CI)")

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A report.html with every section: a student 19 points below its teacher, an INT8 model 2.5x slower than
    the FP32 student, a host that is not the target, the two scatters and a curves plot."""
    out = tmp_path_factory.mktemp("browser")
    report = json.loads((FIX / "report_sample.json").read_text())
    teacher, fp32, int8 = report["models"]
    fp32["metric"]["value"], int8["latency_ms"]["p90"] = 0.795, 0.375
    add_findings(report)
    pngs = plot_report(report, out, curves={"distill": FIX / "curves_sample.csv"})
    return render_html(report, pngs, out / "report.html"), report


def _near(img: np.ndarray, hex_colour: str, tol: int = 24) -> int:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(img.astype(int) - rgb).max(axis=2) <= tol).sum())


def test_screenshot_is_a_painted_png_of_the_asked_size(page, tmp_path):
    from PIL import Image

    html_path, _ = page
    png = screenshot(html_path, tmp_path / "shot.png", 1000, 1600)
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and struct.unpack(">II", data[16:24]) == (1000, 1600)
    img = np.asarray(Image.open(png).convert("RGB"))
    assert (img.min(axis=2) < 100).mean() > 0.005  # dark text, not a blank page
    assert _near(img, "#b25b00") > 500  # the warnings, in the stylesheet's orange
    assert _near(img, "#1f77b4", tol=12) > 50  # an embedded plot's FP32 blue: the base64 PNGs were decoded and drawn


def test_dom_has_the_deliverable_the_warnings_and_the_comparison_table(page):
    html_path, report = page
    dom = dump_dom(html_path)
    assert '<p class="deliverable">Deliverable: <b>student_int8</b></p>' in dom
    assert len(report["warnings"]) == 3  # far below the teacher, INT8 slower, not the target
    for w in report["warnings"]:
        assert f"<li>{html.escape(w, quote=False)}</li>" in dom
    table = re.search(r'<table id="comparisons">.*?</table>', dom, re.S).group(0)
    for row in comparisons_table(report)[1]:
        assert "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" in table
    assert dom.count('src="data:image/png;base64,') == 3
