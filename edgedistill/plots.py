"""Pictures of a run: metric vs size and metric vs p90 with the target's budgets, training curves,
and a self-contained ``report.html`` (PNGs embedded as base64, no network needed to open it).

Matplotlib is used through ``matplotlib.figure.Figure`` (the Agg canvas), never ``pyplot``, so no
global backend state is touched and nothing needs a display.
"""

from __future__ import annotations

import base64
import csv
import html
import math
from pathlib import Path

from . import _io
from .errors import DataError

_COLOURS = {"fp32": "#1f77b4", "int8": "#d62728"}
_MARKERS = {"teacher": "s", "student": "o"}


def plot_report(report: dict, out_dir, *, curves_csv: str | None = None) -> list[Path]:
    """Write ``metric_vs_size.png``, ``metric_vs_p90.png`` and (given a curves.csv) ``curves.png``."""
    _check_report(report)
    out = Path(out_dir)
    paths = [_save(scatter_figure(report, "size"), out / "metric_vs_size.png"),
             _save(scatter_figure(report, "p90"), out / "metric_vs_p90.png")]
    if curves_csv is not None:
        paths.append(_save(curves_figure(read_curves(curves_csv)), out / "curves.png"))
    return paths


def scatter_figure(report: dict, x: str):
    """One point per model (metric against file size or p90), budgets as dashed lines, deliverable ringed."""
    from matplotlib.figure import Figure

    budgets = report["target"].get("budgets", {})
    xkey, xlabel, budget = {"size": (lambda m: m["size_mb"], "file size (MB)", budgets.get("size_mb")),
                            "p90": (lambda m: m["latency_ms"]["p90"], "p90 latency (ms)", budgets.get("p90_ms"))}[x]
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    models = report["models"]
    xs = [xkey(m) for m in models]
    for m, xv in zip(models, xs):
        ax.scatter([xv], [m["metric"]["value"]], s=60, c=_COLOURS.get(m["precision"], "#555555"),
                   marker=_MARKERS.get(m["role"], "o"), zorder=3)
        ax.annotate(m["name"], (xv, m["metric"]["value"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
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
    for role, marker in _MARKERS.items():
        ax.scatter([], [], marker=marker, c="#777777", label=role)
    for prec, colour in _COLOURS.items():
        ax.scatter([], [], marker="o", c=colour, label=prec)
    metric_name = models[0]["metric"]["name"] if models else "metric"
    ax.set_xlabel(xlabel + (" — lower is better" if x == "p90" else ""))
    ax.set_ylabel(metric_name)
    ax.set_title(f"{metric_name} vs {xlabel} on {report['target']['name']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return fig


def read_curves(path) -> list[dict]:
    """Rows of a distill ``curves.csv`` (epoch, loss_<term>..., train_acc, val_acc, lr) as floats."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: curves file not found; run the distill stage first or pass the right path.")
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "epoch" not in rows[0]:
        raise DataError(f"{p}: no 'epoch' column or no rows; it must be the curves.csv the distill stage writes.")
    out = []
    for r in rows:
        try:
            out.append({k: float(v) for k, v in r.items() if v not in ("", None)})
        except ValueError as e:
            raise DataError(f"{p}: a non-numeric value ({e}); it must be the curves.csv the distill stage writes.") from None
    return out


def curves_figure(rows: list[dict]):
    """Left: every loss term (and the total) per epoch. Right: train accuracy and the validation metric."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
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


def render_html(report: dict, pngs, out_path) -> Path:
    """A single ``report.html`` that opens offline: the report table with every PNG embedded."""
    _check_report(report)
    e = html.escape
    t = report["target"]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>edgedistill report: {e(t['name'])}</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>edgedistill report</h1>",
             f"<p>Target <b>{e(t['name'])}</b>; budgets: "
             + ", ".join(f"{e(str(k))} = {e(str(v))}" for k, v in t.get("budgets", {}).items()) + "</p>",
             f"<p>Deliverable: <b>{e(str(report.get('deliverable')))}</b></p>"]
    m = report.get("machine") or {}
    if m:
        isa = ", ".join(k for k, v in (m.get("isa") or {}).items() if v) or "none recorded"
        parts.append(f"<p>Measured on {e(str(m.get('cpu', '?')))}, {e(str(m.get('cores', '?')))} cores "
                     f"(ISA: {e(isa)}), onnxruntime {e(str(m.get('onnxruntime', '?')))}.</p>")
    if report.get("host_matches_target") is False:
        parts.append('<p class="warn">The benchmark host is not the target device: latency and memory were '
                     "measured here and are not scaled to the target.</p>")
    parts += ["<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in (
        "model", "role", "precision", "metric", "size (MB)", "p50 (ms)", "p90 (ms)", "p99 (ms)", "peak RSS (MB)",
        "verdict")) + "</tr></thead><tbody>"]
    for x in report["models"]:
        lat = x["latency_ms"]
        ok = x.get("within_budget")
        verdict = "within budget" if ok else "; ".join(x.get("violations") or ["—"])
        cls = ' class="deliverable"' if x["name"] == report.get("deliverable") else ""
        cells = [x["name"], x["role"], x["precision"], f"{x['metric']['name']} {x['metric']['value']:.4f}",
                 f"{x['size_mb']:.4f}", f"{lat['p50']:.4f}", f"{lat['p90']:.4f}", f"{lat['p99']:.4f}",
                 f"{x['peak_rss_mb']:.1f}"]
        parts.append(f"<tr{cls}>" + "".join(f"<td>{e(str(c))}</td>" for c in cells)
                     + f'<td class="{"ok" if ok else "miss"}">{e(verdict)}</td></tr>')
    parts.append("</tbody></table>")
    for p in pngs:
        p = Path(p)
        data = p.read_bytes()
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise DataError(f"{p}: not a PNG file; pass the PNGs plot_report wrote.")
        parts.append(f'<figure><img alt="{e(p.stem)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
                     f"<figcaption>{e(p.stem.replace('_', ' '))}</figcaption></figure>")
    parts.append("</body></html>")
    return _io.write_text(out_path, "\n".join(parts) + "\n")


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f3f3f3}td:first-child,td:nth-child(2),td:nth-child(3){text-align:left}"
        "tr.deliverable{font-weight:bold;background:#eef8ee}td.ok{color:#2a7a2a}td.miss{color:#b22}"
        ".warn{color:#b25b00;font-weight:bold}img{max-width:100%}figure{margin:1.5em 0}")


def _check_report(report: dict) -> None:
    for key in ("target", "models"):
        if key not in report:
            raise DataError(f"report: the '{key}' key is missing; pass the report.json the report stage writes.")
    for i, m in enumerate(report["models"]):
        for key in ("name", "role", "precision", "metric", "size_mb", "latency_ms", "peak_rss_mb"):
            if key not in m:
                raise DataError(f"report.models[{i}]: the '{key}' key is missing; pass the report.json the "
                                "report stage writes.")


def _save(fig, path: Path) -> Path:
    return _io.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
