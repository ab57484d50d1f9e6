"""How a report reads: the tables, lines and pages that ``report.md`` and ``report.html`` print.

Only formatting: every figure and conclusion comes from ``report.json``'s content (computed by
:mod:`edgedistill.report`); both renderers take their cells from the same tables, so they cannot disagree.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from . import _io
from .errors import DataError
from .sizing import knob_text


def models_table(report: dict) -> tuple[list[str], list[list[str]]]:
    """The header and one row of cells per model (metric, size, latency, peak RSS, budget verdict)."""
    ci = " [95% CI]" if any("ci95" in x["latency_ms"] for x in report["models"]) else ""
    header = ["model", "role", "precision", "runtime", "metric", "size (MB)", f"p50 (ms){ci}", f"p90 (ms){ci}",
              "p99 (ms)", "peak RSS (MB)", "verdict"]
    rows = []
    for x in report["models"]:
        lat = x["latency_ms"]
        verdict = "within budget" if x.get("within_budget") else "; ".join(x.get("violations") or ["—"])
        verdict += "".join(f"; {m} (indicative)" for m in x.get("indicative_misses") or [])
        rows.append([x["name"], x["role"], x["precision"], _RUNTIME_NAMES[x.get("runtime", "onnxruntime")],
                     f"{x['metric']['name']} {x['metric']['value']:.4f}",
                     f"{x['size_mb']:.4f}", _with_ci(lat, "p50"), _with_ci(lat, "p90"), f"{lat['p99']:.4f}",
                     f"{x['peak_rss_mb']:.1f}", verdict])
    return header, rows


_RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "litert": "LiteRT"}


def _with_ci(lat: dict, q: str) -> str:
    """A percentile cell, with its 95 % confidence interval when the bench measured one."""
    ci = (lat.get("ci95") or {}).get(q)
    return f"{lat[q]:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def comparisons_table(report: dict) -> tuple[list[str], list[list[str]]]:
    """The header and one row of cells per student model against the teacher."""
    metric = report["comparisons"][0]["metric"] if report["comparisons"] else "metric"
    header = ["model", "precision", "size vs teacher", "p90 vs teacher", f"{metric} points lost"]
    rows = [[c["name"], c["precision"], _times(c["smaller_x"], "smaller", "larger"),
             _times(c["faster_p90_x"], "faster", "slower"), f"{c['points_lost']:.1f}"] for c in report["comparisons"]]
    return header, rows


def _times(x: float | None, better: str, worse: str) -> str:
    if x is None:
        return "—"
    return f"{x:.1f}x {better}" if x >= 1 else f"{1 / x:.1f}x {worse}"


def target_line(report: dict) -> str:
    """``laptop-x86 (x86_64, 4 cores); budgets: size_mb = 20.0, ...`` (plain text, for either renderer)."""
    t = report["target"]
    hw = f" ({t['architecture']}, {t['cores']} cores)" if t.get("architecture") else ""
    runtime = f"; runtime: {t['runtime']}" if t.get("runtime", "onnxruntime") != "onnxruntime" else ""
    return f"{t['name']}{hw}{runtime}; budgets: " + ", ".join(f"{k} = {v}" for k, v in t.get("budgets", {}).items())


def machine_line(report: dict) -> str:
    """Where the benchmark ran, as a sentence (empty when the report records no machine)."""
    m = report.get("machine") or {}
    if not m:
        return ""
    isa = ", ".join(k for k, v in (m.get("isa") or {}).items() if v) or "none recorded"
    over = f" over SSH on {report['remote']['host']}" if report.get("remote") else ""
    return (f"Measured{over} on {m.get('cpu', '?')} ({m.get('architecture', '?')}), {m.get('cores', '?')} cores "
            f"(ISA: {isa}), onnxruntime {m.get('onnxruntime', '?')}.")


def distillation_line(report: dict) -> str:
    """What ``distill.alpha`` / ``distill.temperature = "auto"`` chose and by which validation figures, as a
    sentence (empty when the recipe gave numbers)."""
    d = report.get("distillation") or {}
    if not d.get("searched"):
        return f"Not chosen: {d['note']}." if d.get("note") else ""
    key = d["metric"]
    tried = "; ".join(f"alpha {r['alpha']:g}, T {r['temperature']:g}: {r[key]:.4f}" for r in d["candidates"])
    why = " (labels only: the teacher did not help on validation)" if d["alpha"] == 1.0 else ""
    if d.get("margin") is not None:
        why += f"; distilling had to beat labels only by more than {d['margin']:.4f}"
    share = d.get("share_of_stage_seconds")
    cost = f"{d['seconds']:.0f} s" + (f", {100 * share:.0f} % of the distill stage" if share is not None else "")
    return (f"Chosen on the validation split: alpha {d['alpha']:g}, temperature {d['temperature']:g}{why}. "
            f"Each candidate trained {d['epochs_per_candidate']} epoch(s) of {d['samples_per_epoch']} samples; "
            f"{key}: {tried}. The search took {cost}.")


def sizing_line(report: dict) -> str:
    """How ``student.size = "fit"`` chose the student, as sentences (empty when the recipe sized it by hand)."""
    z = report.get("sizing")
    if not z:
        return ""
    where = ("on the target" if z["machine"].get("measured_on_target") else
             "on this host, not on the target (its latency is this host's)")
    share = z.get("share_of_run_seconds")
    cost = f"{z['seconds']:.0f} s" + (f", {100 * share:.0f} % of the run's stage time" if share is not None else "")
    text = (f"Sized before training: {z['measured']} of {len(z['candidates'])} {z['arch']} candidates measured "
            f"untrained {where}, each budget less a {100 * z['margin']:g} % margin. {z['chosen']['why']} "
            f"Sizing took {cost}.")
    if z.get("refit_steps"):
        text += (f" Re-fitted {z['refit_steps']} step(s) down with --refit: trained "
                 f"{knob_text(z['trained']['knobs'])}.")
    return text


def sizing_table(report: dict) -> tuple[list[str], list[list[str]]]:
    """One row per measured candidate (most capable first): knobs, MACs, parameters, figures, verdict."""
    z = report["sizing"]
    header = ["candidate", "MACs", "parameters", "precision", "size (MB)", "p90 (ms)", "peak RSS (MB)", "verdict"]
    rows = []
    for c in z["candidates"]:
        if c["status"] != "measured":
            continue
        mark = " (trained)" if c["knobs"] == z["trained"]["knobs"] else ""
        verdict = "within budget" if c["within_budget"] else "; ".join(c["models"][c["precision"]]["misses"])
        rss = "—" if c.get("peak_rss_mb") is None else f"{c['peak_rss_mb']:.1f}"
        rows.append([knob_text(c["knobs"]) + mark, f"{c['macs']:,}", f"{c['parameters']:,}", c["precision"],
                     f"{c['size_mb']:.4f}", f"{c['p90_ms']:.4f}", rss, verdict])
    return header, rows


def render_markdown(report: dict) -> str:
    lines = ["# edgedistill report", "", f"Target: **{target_line(report)}**", "",
             f"Deliverable: **{report['deliverable']}**"]
    if report.get("deliverable_reason"):
        lines += ["", f"Why: {report['deliverable_reason']}"]
    lines += ["", "## Warnings", ""] + ([f"- {w}" for w in report["warnings"]] or ["None."])
    if report["comparisons"]:
        lines += ["", f"## Against the teacher ({report['comparisons'][0]['teacher']})", "",
                  *_md_table(*comparisons_table(report))]
    if sizing_line(report):
        lines += ["", "## Sizing", "", sizing_line(report), "", *_md_table(*sizing_table(report))]
    if distillation_line(report):
        lines += ["", "## Distillation", "", distillation_line(report)]
    lines += ["", "## Models", ""] + ([machine_line(report), ""] if machine_line(report) else [])
    lines += _md_table(*models_table(report))
    return "\n".join(lines) + "\n"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def render_html(report: dict, pngs, out_path) -> Path:
    """A single ``report.html`` that opens offline: the deliverable and why, the warnings, the students
    against the teacher, every model's figures, and every PNG embedded. It only formats what
    ``report.json`` says (``edgedistill.report`` computes it)."""
    check_report(report, ("deliverable", "comparisons", "warnings"))
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>edgedistill report: {e(report['target']['name'])}</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>edgedistill report</h1>", f"<p>Target: <b>{e(target_line(report))}</b></p>",
             f'<p class="deliverable">Deliverable: <b>{e(str(report["deliverable"]))}</b></p>']
    if report.get("deliverable_reason"):
        parts.append(f'<p class="why">Why: {e(report["deliverable_reason"])}</p>')
    parts.append('<h2 id="warnings">Warnings</h2>')
    parts.append('<ul class="warn">' + "".join(f"<li>{e(w)}</li>" for w in report["warnings"]) + "</ul>"
                 if report["warnings"] else "<p>None.</p>")
    if report["comparisons"]:
        parts += [f'<h2>Against the teacher ({e(report["comparisons"][0]["teacher"])})</h2>',
                  _html_table(*comparisons_table(report), "comparisons")]
    if sizing_line(report):
        parts += ["<h2>Sizing</h2>", f"<p>{e(sizing_line(report))}</p>", _html_table(*sizing_table(report), "sizing")]
    if distillation_line(report):
        parts += ["<h2>Distillation</h2>", f"<p>{e(distillation_line(report))}</p>"]
    parts.append("<h2>Models</h2>")
    if machine_line(report):
        parts.append(f"<p>{e(machine_line(report))}</p>")
    parts.append(_html_table(*models_table(report), "models", _model_row_classes(report)))
    for p in pngs:
        parts.append(_figure(Path(p)))
    parts.append("</body></html>")
    return _io.write_text(out_path, "\n".join(parts) + "\n")


def _html_table(header: list[str], rows: list[list[str]], table_id: str, row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(_html_row(r, c) for r, c in zip(rows, row_classes or [""] * len(rows)))
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _html_row(cells: list[str], css_class: str) -> str:
    attr = f' class="{css_class}"' if css_class else ""
    return f"<tr{attr}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def _model_row_classes(report: dict) -> list[str]:
    return [" ".join(c for c in ("deliverable" if m["name"] == report["deliverable"] else "",
                                 "ok" if m.get("within_budget") else "miss") if c) for m in report["models"]]


def _figure(p: Path) -> str:
    data = p.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise DataError(f"{p}: not a PNG file; pass the PNGs plot_report wrote.")
    return (f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
            f"<figcaption>{html.escape(p.stem.replace('_', ' '))}</figcaption></figure>")


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f3f3f3}td:first-child,td:nth-child(2),td:nth-child(3),td:nth-child(4){text-align:left}"
        "tr.deliverable{font-weight:bold;background:#eef8ee}tr.ok td:last-child{color:#2a7a2a}"
        "tr.miss td:last-child{color:#b22}.warn li{color:#b25b00;font-weight:bold;margin:.3em 0}"
        "p.deliverable{font-size:1.2em}img{max-width:100%}figure{margin:1.5em 0}")


def check_report(report: dict, also: tuple = ()) -> None:
    """Refuse a report dict that lacks what the renderers and plots read, naming the key."""
    for key in ("target", "models", *also):
        if key not in report:
            raise DataError(f"report: the '{key}' key is missing; pass the report.json the report stage writes.")
    for i, m in enumerate(report["models"]):
        for key in ("name", "role", "precision", "metric", "size_mb", "latency_ms", "peak_rss_mb"):
            if key not in m:
                raise DataError(f"report.models[{i}]: the '{key}' key is missing; pass the report.json the "
                                "report stage writes.")
