"""Report stage: ``report.json`` (the stable contract other tools read) and ``report.md``."""

from __future__ import annotations

from pathlib import Path

from . import _io, _schema
from .targets import Target


def check_budgets(model: dict, target: Target) -> list[str]:
    """The budgets of ``target`` that ``model`` misses, as sentences (empty when within budget)."""
    b, out = target.budgets, []
    if model["size_mb"] > b.size_mb:
        out.append(f"size {model['size_mb']:.3f} MB > {b.size_mb:g} MB")
    if b.p90_ms is not None and model["latency_ms"]["p90"] > b.p90_ms:
        out.append(f"p90 {model['latency_ms']['p90']:.3f} ms > {b.p90_ms:g} ms")
    if b.peak_ram_mb is not None and model["peak_rss_mb"] > b.peak_ram_mb:
        out.append(f"peak RSS {model['peak_rss_mb']:.1f} MB > {b.peak_ram_mb:g} MB")
    if b.min_metric is not None and model["metric"]["value"] < b.min_metric:
        out.append(f"{model['metric']['name']} {model['metric']['value']:.4f} < {b.min_metric:g}")
    return out


def build_report(target: Target, metrics: dict, bench: dict, model_files: dict, run_dir: Path,
                 tolerance: float = 1.0, extra: dict | None = None) -> dict:
    """Assemble ``report.json``'s content from the verify metrics and the benchmark.

    The deliverable is chosen among the students by :func:`choose_deliverable`: the fastest, then
    smallest, that meets every budget and loses at most ``tolerance`` accuracy points against the
    FP32 student; ``deliverable_reason`` says why.
    """
    from .quant.deliverable import choose_deliverable

    by_path = {str(Path(m["path"]).resolve()): m for m in bench["models"]}
    models = []
    for name, (stage_name, _file, role, precision) in model_files.items():
        if name not in metrics:
            continue
        path = next(p for p in by_path if Path(p).name == _file)
        b = by_path[path]
        lat = b["latency_ms"]
        entry = {
            "name": name, "role": role, "precision": precision,
            "path": str(Path(path).relative_to(run_dir.resolve())),
            "metric": metrics[name]["metric"], "size_mb": round(b["size_mb"], 6),
            "latency_ms": {k: round(lat[k], 4) for k in ("p50", "p90", "p99", "mean")},
            "peak_rss_mb": round(b["peak_rss_mb"], 2),
        }
        entry["violations"] = check_budgets(entry, target)
        entry["within_budget"] = not entry["violations"]
        models.append(entry)
    candidates = [{"name": m["name"], "accuracy": m["metric"]["value"], "metric_name": m["metric"]["name"], "size_mb": m["size_mb"],
                   "p90_ms": m["latency_ms"]["p90"], "peak_ram_mb": m["peak_rss_mb"],
                   "reference": m["precision"] == "fp32"} for m in models if m["role"] == "student"]
    deliverable, reason = choose_deliverable(candidates, target.budgets, tolerance)
    report = {
        "target": {"name": target.name, "budgets": _schema.to_dict(target.budgets)},
        "deliverable": deliverable,
        "deliverable_reason": reason,
        "tolerance_points": tolerance,
        "models": models,
        "machine": bench.get("machine", {}),
        "host_matches_target": bench.get("host_matches_target"),
    }
    if extra:
        report.update(extra)
    return report


def render_markdown(report: dict) -> str:
    t = report["target"]
    lines = ["# edgedistill report", "",
             f"Target: **{t['name']}**, budgets: " + ", ".join(f"{k} = {v}" for k, v in t["budgets"].items()),
             f"Deliverable: **{report['deliverable']}**", ""]
    if report.get("deliverable_reason"):
        lines[-1:-1] = ["", f"Why: {report['deliverable_reason']}"]
    m = report.get("machine") or {}
    if m:
        lines.append(f"Measured on: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, onnxruntime {m.get('onnxruntime', '?')}.")
        if report.get("host_matches_target") is False:
            lines.append("**The benchmark host is not the target device**: latency and memory were measured here, not on the target.")
        lines.append("")
    lines += ["| model | role | precision | metric | size (MB) | p50 (ms) | p90 (ms) | p99 (ms) | peak RSS (MB) | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for x in report["models"]:
        verdict = "within budget" if x["within_budget"] else "; ".join(x["violations"])
        lat = x["latency_ms"]
        lines.append(f"| {x['name']} | {x['role']} | {x['precision']} | {x['metric']['name']} {x['metric']['value']:.4f} | "
                     f"{x['size_mb']:.4f} | {lat['p50']:.4f} | {lat['p90']:.4f} | {lat['p99']:.4f} | {x['peak_rss_mb']:.1f} | {verdict} |")
    return "\n".join(lines) + "\n"


def write_report(ctx, metrics: dict, bench: dict, model_files: dict, curves_csv: Path | None = None,
                 tolerance: float = 1.0) -> list[Path]:
    """Write ``report.json``, ``report.md``, the PNG plots and a self-contained ``report.html``."""
    from .plots import plot_report, render_html

    report = build_report(ctx.target, metrics, bench, model_files, ctx.run_dir, tolerance=tolerance)
    out = ctx.run_dir / "report"
    pngs = plot_report(report, out, curves_csv=str(curves_csv) if curves_csv and curves_csv.exists() else None)
    md = render_markdown(report) + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    return [_io.write_json(out / "report.json", report), _io.write_text(out / "report.md", md),
            *pngs, render_html(report, pngs, out / "report.html")]


def deliverable_entry(report: dict) -> dict:
    return next(m for m in report["models"] if m["name"] == report["deliverable"])
