"""docs/report_screenshot.png: the report.html of a real tiny run, rendered by headless Chromium.

Runs the tests' tiny digits recipe, trained a little longer (about a minute on 2 cores), in a
temporary folder, opens its ``report/report.html`` in headless Chromium (Debian package ``chromium``)
and saves the whole page, trimmed below the last non-white row, as a 256-colour PNG. The helpers
(``find_chromium``, ``screenshot``, ``dump_dom``) are also what ``tests/test_report_browser.py`` uses.

    PYTHONPATH=. python benchmarks/report_screenshot.py [--out docs/report_screenshot.png] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def recipe_dict() -> dict:
    """The tests' tiny recipe (tests/conftest.py), trained long enough for the page to show real figures."""
    from edgedistill._schema import tomllib
    from tests.conftest import TINY_RECIPE

    d = tomllib.loads(TINY_RECIPE)
    d["name"] = "report-screenshot"
    d["data"]["batch_size"] = 32
    d["teacher"].update(params={"width": 16, "depth": 2}, epochs=8, lr=0.01)
    d["student"]["params"] = {"width": 8, "depth": 1}
    d["distill"].update(epochs=8, lr=0.01)
    d["qat"]["epochs"] = 2
    d["bench"].update(runs=20, warmup=2)
    return d


WIDTH = 1200
TALL = 8000  # the window is this tall, then the blank rows below the page are trimmed


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _chromium(html: Path, *flags: str) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise RuntimeError("chromium is not installed; on Debian: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: no first-run state, no lock shared with others
        proc = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               "--hide-scrollbars", "--no-first-run", f"--user-data-dir={profile}", *flags,
                               Path(html).resolve().as_uri()], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def screenshot(html: Path, png: Path, width: int, height: int) -> Path:
    """Render ``html`` in a ``width`` x ``height`` window and save it as ``png``."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    _chromium(html, f"--window-size={width},{height}", f"--screenshot={png}")
    return png


def dump_dom(html: Path) -> str:
    """The DOM of ``html`` after Chromium has parsed and laid it out, serialized."""
    return _chromium(html, "--dump-dom").stdout


def trim_blank_bottom(png: Path, margin: int = 24) -> Path:
    """Cut the white rows below the page's last painted row (plus ``margin``)."""
    import numpy as np
    from PIL import Image

    img = Image.open(png).convert("RGB")
    painted = np.flatnonzero((np.asarray(img) < 250).any(axis=(1, 2)))
    bottom = min(img.height, int(painted[-1]) + margin) if len(painted) else img.height
    img.crop((0, 0, img.width, bottom)).save(png, optimize=True)
    return png


def to_palette(png: Path) -> Path:
    """Store ``png`` with 256 colours: about a third of the bytes, no visible loss for a report page."""
    from PIL import Image

    Image.open(png).convert("RGB").quantize(256).save(png, optimize=True)
    return png


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "report_screenshot.png"))
    ap.add_argument("--keep", help="run in this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    from edgedistill.pipeline import run
    from edgedistill.recipe import recipe_from_dict

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.keep or tmp) / "run"
        report = run(recipe_from_dict(recipe_dict(), "report screenshot recipe"), run_dir, log=print)
        png = to_palette(trim_blank_bottom(screenshot(run_dir / "report" / "report.html", Path(args.out), WIDTH, TALL)))
    print(f"deliverable: {report['deliverable_reason']}")
    for w in report["warnings"]:
        print(f"warning: {w}")
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
