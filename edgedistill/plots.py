"""Pictures of a run: metric vs size and metric vs p90 with the target's budgets, training curves,
and a self-contained ``report.html`` (PNGs embedded as base64, no network needed to open it).

Matplotlib is used through ``matplotlib.figure.Figure`` (the Agg canvas), never ``pyplot``, so no
global backend state is touched and nothing needs a display.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from . import _io
from .errors import DataError
from .report_render import check_report

_COLOURS = {"fp32": "#1f77b4", "int8": "#d62728"}
_MARKERS = ["o", "^", "D", "v", "P", "X", "*", "h"]  # one per student model, in report order; the teacher is "s"


def plot_report(report: dict, out_dir, *, curves: dict | None = None) -> list[Path]:
    """Write ``metric_vs_size.png``, ``metric_vs_p90.png`` and one ``curves_<label>.png`` per trained stage.

    ``curves``: a label (``teacher``, ``distill``, ``qat_observe``...) -> that stage's ``curves.csv``; a file
    that is absent or has no rows (nothing was trained, e.g. ``distill.epochs = 0``) is left out.
    """
    check_report(report)
    out = Path(out_dir)
    paths = [_save(scatter_figure(report, "size"), out / "metric_vs_size.png"),
             _save(scatter_figure(report, "p90"), out / "metric_vs_p90.png")]
    if report.get("sizing"):
        paths.append(_save(sizing_figure(report), out / "sizing.png"))
    for label, csv_path in (curves or {}).items():
        if has_curves(csv_path):
            paths.append(_save(curves_figure(read_curves(csv_path), title=f"{label} training curves"),
                               out / f"curves_{label}.png"))
    return paths


def scatter_figure(report: dict, x: str):
    """One point per model (metric against file size or p90), budgets as dashed lines, deliverable ringed.

    Models are told apart by marker and colour in a legend beside the axes, never by text next to a
    point, so no label can overlap another or hide a point however close the models are.
    """
    from matplotlib.figure import Figure

    budgets = report["target"].get("budgets", {})
    xkey, xlabel, budget = {"size": (lambda m: m["size_mb"], "file size (MB)", budgets.get("size_mb")),
                            "p90": (lambda m: m["latency_ms"]["p90"], "p90 latency (ms)", budgets.get("p90_ms"))}[x]
    fig = Figure(figsize=(8.0, 4.4), layout="constrained")
    ax = fig.subplots()
    models = report["models"]
    xs = [xkey(m) for m in models]
    for m, xv, marker in zip(models, xs, model_markers(models)):
        ax.scatter([xv], [m["metric"]["value"]], s=60, c=_COLOURS.get(m["precision"], "#555555"), marker=marker,
                   edgecolors="black", linewidths=0.5, zorder=3, label=f"{m['name']} ({m['precision'].upper()})")
    deliverable = next((m for m in models if m["name"] == report.get("deliverable")), None)
    if deliverable is not None:
        ax.scatter([xkey(deliverable)], [deliverable["metric"]["value"]], s=320, facecolors="none",
                   edgecolors="#2ca02c", linewidths=2, zorder=4, label=f"deliverable: {deliverable['name']}")
    if budget is not None:
        ax.axvline(budget, color="#ff7f0e", linestyle="--", label=f"budget {budget:g} {xlabel.split('(')[1][:-1]}")
    if budgets.get("min_metric") is not None:
        ax.axhline(budgets["min_metric"], color="#9467bd", linestyle=":", label=f"min metric {budgets['min_metric']:g}")
    positive = [v for v in xs + ([budget] if budget else []) if v and v > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_xscale("log")
    metric_name = models[0]["metric"]["name"] if models else "metric"
    ax.set_xlabel(xlabel + (" — lower is better" if x == "p90" else ""))
    ax.set_ylabel(metric_name)
    ax.set_title(f"{metric_name} vs {xlabel.split(' (')[0]} on {report['target']['name']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return fig


def sizing_figure(report: dict):
    """The sized candidates against the budgets: p90 and file size (and peak RSS when budgeted) against MACs, each
    budget and its margin line dashed, the ones within budget in green, the trained one ringed."""
    from matplotlib.figure import Figure

    z, budgets = report["sizing"], report["target"].get("budgets", {})
    rows = [c for c in z["candidates"] if c["status"] == "measured"]
    panels = [("p90_ms", "p90 latency (ms)", budgets.get("p90_ms")), ("size_mb", "file size (MB)", budgets.get("size_mb"))]
    if budgets.get("peak_ram_mb") is not None:
        panels.append(("peak_rss_mb", "peak RSS (MB)", budgets["peak_ram_mb"]))
    fig = Figure(figsize=(4.2 * len(panels), 3.8), layout="constrained")
    fig.suptitle(f"sizing {z['arch']} for {report['target']['name']}: untrained candidates, most fitting precision")
    for ax, (key, label, budget) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for ok, colour, name in ((True, "#2ca02c", "within budget"), (False, "#d62728", "misses a budget")):
            pts = [(c["macs"], c[key]) for c in rows if bool(c["within_budget"]) == ok and c.get(key) is not None]
            if pts:
                ax.scatter(*zip(*pts), s=36, c=colour, edgecolors="black", linewidths=0.5, zorder=3, label=name)
        trained = next((c for c in rows if c["knobs"] == z["trained"]["knobs"]), None)
        if trained is not None and trained.get(key) is not None:
            ax.scatter([trained["macs"]], [trained[key]], s=260, facecolors="none", edgecolors="#1f77b4",
                       linewidths=2, zorder=4, label="trained")
        if budget is not None:
            ax.axhline(budget, color="#ff7f0e", linestyle="--", label=f"budget {budget:g}")
            ax.axhline(budget * (1 - z["margin"]), color="#ff7f0e", linestyle=":", label=f"less {100 * z['margin']:g} % margin")
        ax.set_xscale("log")
        ax.set_xlabel("MACs per sample")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def model_markers(models: list[dict]) -> list[str]:
    """A distinct marker per model: a square for the teacher, the next of ``_MARKERS`` for each student."""
    students = iter(_MARKERS * (1 + len(models) // len(_MARKERS)))
    return ["s" if m["role"] == "teacher" else next(students) for m in models]


def has_curves(path) -> bool:
    """Whether ``path`` is a curves file with at least one row (absent or header-only: nothing was trained)."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, newline="") as f:
        return sum(1 for line in f if line.strip()) >= 2


def read_curves(path) -> list[dict]:
    """Rows of a training stage's ``curves.csv`` (epoch, loss_<term>..., train_acc, val_acc, lr) as floats."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: curves file not found; run the distill stage first or pass the right path.")
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "epoch" not in rows[0]:
        raise DataError(f"{p}: no 'epoch' column or no rows; it must be the curves.csv a training stage writes.")
    out = []
    for r in rows:
        try:
            out.append({k: float(v) for k, v in r.items() if v not in ("", None)})
        except ValueError as e:
            raise DataError(f"{p}: a non-numeric value ({e}); it must be the curves.csv a training stage writes.") from None
    return out


def curves_figure(rows: list[dict], title: str | None = None):
    """Left: every loss term (and the total) per epoch. Right: train accuracy and the validation metric."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    if title:
        fig.suptitle(title)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in rows]
    loss_keys = list(dict.fromkeys(k for r in rows for k in r if k.startswith("loss_")))
    for k in loss_keys:
        ys = [r.get(k, math.nan) for r in rows]
        ax_loss.plot(epochs, ys, marker="o", ms=3, lw=2.2 if k == "loss_total" else 1.2,
                     linestyle="-" if k == "loss_total" else "--", label=k[len("loss_"):])
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (per sample)")
    ax_loss.set_title("loss per term")
    if loss_keys:
        ax_loss.legend(fontsize=8)
    metric_keys = ["train_acc"] + sorted({k for r in rows for k in r if k.startswith("val_")})
    for k in metric_keys:  # val_acc, or the task's own validation metric (val_spearman)
        ys = [r.get(k, math.nan) for r in rows]
        if any(not math.isnan(y) for y in ys):
            ax_acc.plot(epochs, ys, marker="o", ms=3, label=k)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("metric")
    ax_acc.set_title("training and validation metric")
    if ax_acc.lines:
        ax_acc.legend(fontsize=8)
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
    return fig


def _save(fig, path: Path) -> Path:
    return _io.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
