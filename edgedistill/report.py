"""Report stage: ``report.json`` (the stable contract other tools read) and ``report.md``.

What the report concludes is computed once, here, into ``report.json``: the deliverable and why
(``quant/deliverable.py``), each student against the teacher (:func:`compare_with_teacher`) and the
warnings (:func:`report_warnings`). ``report.md`` and ``report.html`` (``plots.py``) only format it,
through the same tables (:func:`models_table`, :func:`comparisons_table`).
"""

from __future__ import annotations

from pathlib import Path

from . import _io, _schema
from .quant.deliverable import TIE_FRACTION
from .targets import Target

STUDENT_GAP_POINTS = 5.0  # a student more than this many metric points below its teacher is warned about


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
                 tolerance: float = 1.0, extra: dict | None = None, favour: str = "latency") -> dict:
    """Assemble ``report.json``'s content from the verify metrics and the benchmark.

    The deliverable is chosen among the students by :func:`choose_deliverable`: within every budget
    and at most ``tolerance`` accuracy points below the FP32 student, the one that best serves
    ``favour`` ("latency" or "size"); ``deliverable_reason`` says why. ``comparisons`` and
    ``warnings`` are added by :func:`add_findings`.
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
    deliverable, reason = choose_deliverable(candidates, target.budgets, tolerance, favour)
    report = {
        "target": {"name": target.name, "architecture": target.architecture, "cores": target.cores,
                   "budgets": _schema.to_dict(target.budgets)},
        "deliverable": deliverable,
        "deliverable_reason": reason,
        "tolerance_points": tolerance,
        "favour": favour,
        "models": models,
        "machine": bench.get("machine", {}),
        "host_matches_target": bench.get("host_matches_target"),
    }
    if extra:
        report.update(extra)
    return add_findings(report)


# --- what the report concludes: computed once, formatted by every renderer ------------------------

def add_findings(report: dict) -> dict:
    """Set ``report["comparisons"]`` and ``report["warnings"]`` from its models, target and machine; return it."""
    report["comparisons"] = compare_with_teacher(report["models"])
    report["warnings"] = report_warnings(report)
    return report


def compare_with_teacher(models: list[dict]) -> list[dict]:
    """Each student model against the teacher: how many times smaller and faster at p90, and the metric
    points lost (100 x the difference; negative when the student is better). Empty without a teacher."""
    teacher = next((m for m in models if m["role"] == "teacher"), None)
    if teacher is None:
        return []
    return [{"name": m["name"], "precision": m["precision"], "teacher": teacher["name"],
             "metric": m["metric"]["name"], "value": m["metric"]["value"], "teacher_value": teacher["metric"]["value"],
             "smaller_x": _ratio(teacher["size_mb"], m["size_mb"]),
             "faster_p90_x": _ratio(teacher["latency_ms"]["p90"], m["latency_ms"]["p90"]),
             "points_lost": round(100 * (teacher["metric"]["value"] - m["metric"]["value"]), 2)}
            for m in models if m["role"] == "student"]


def report_warnings(report: dict) -> list[str]:
    """What a user must not miss, in plain sentences: a student far below its teacher, an INT8 model
    slower than its FP32 student, a benchmark that did not run on the target. Needs ``comparisons``."""
    return [*_gap_warnings(report["comparisons"]), *_int8_warnings(report["models"]), *_host_warnings(report)]


def _gap_warnings(comparisons: list[dict]) -> list[str]:
    far = [c for c in comparisons if c["points_lost"] > STUDENT_GAP_POINTS]
    if not far:
        return []
    c0 = far[0]
    each = ", ".join(f"{c['name']} by {c['points_lost']:.1f} ({c['value']:.4f})" for c in far)
    return [f"The student is far below its teacher {c0['teacher']} ({c0['metric']} {c0['teacher_value']:.4f}): {each} "
            f"{c0['metric']} points, more than the {STUDENT_GAP_POINTS:g}-point warning threshold; train the student "
            "longer, make it wider, or try another distillation loss."]


def _int8_warnings(models: list[dict]) -> list[str]:
    fp32 = next((m for m in models if m["role"] == "student" and m["precision"] == "fp32"), None)
    if fp32 is None:
        return []
    base = fp32["latency_ms"]["p90"]
    slow = [m for m in models if m["role"] == "student" and m["precision"] == "int8"
            and m["latency_ms"]["p90"] > base * (1 + TIE_FRACTION)]
    if not slow:
        return []
    each = ", ".join(f"{m['name']} {m['latency_ms']['p90'] / base:.2f}x slower ({m['latency_ms']['p90']:.3f} ms)"
                     for m in slow)
    return [f"INT8 is slower at p90 than the FP32 student {fp32['name']} ({base:.3f} ms) on this host: {each}. "
            "Here quantization buys a smaller file, not speed; INT8 pays off on CPUs with fast INT8 instructions "
            "(AVX-512 VNNI, Arm dot-product) and layers large enough to outweigh the quantize/dequantize steps."]


def _host_warnings(report: dict) -> list[str]:
    t, m = report["target"], report.get("machine") or {}
    host, want = (m.get("architecture"), m.get("cores")), (t.get("architecture"), t.get("cores"))
    known = None not in host and None not in want
    if (known and host == want) or (not known and report.get("host_matches_target") is not False):
        return []
    where = (f"this machine ({host[0]}, {host[1]} cores), not on the target {t['name']} ({want[0]}, {want[1]} cores)"
             if known else f"this machine, not on the target {t['name']}")
    return [f"The benchmark ran on {where}: latency and memory are this host's, unscaled; run "
            "`edgedistill bench` on the device itself for its figures."]


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b > 0 else None


# --- formatting shared by report.md and report.html -----------------------------------------------

def models_table(report: dict) -> tuple[list[str], list[list[str]]]:
    """The header and one row of cells per model (metric, size, latency, peak RSS, budget verdict)."""
    header = ["model", "role", "precision", "metric", "size (MB)", "p50 (ms)", "p90 (ms)", "p99 (ms)",
              "peak RSS (MB)", "verdict"]
    rows = []
    for x in report["models"]:
        lat = x["latency_ms"]
        verdict = "within budget" if x.get("within_budget") else "; ".join(x.get("violations") or ["—"])
        rows.append([x["name"], x["role"], x["precision"], f"{x['metric']['name']} {x['metric']['value']:.4f}",
                     f"{x['size_mb']:.4f}", f"{lat['p50']:.4f}", f"{lat['p90']:.4f}", f"{lat['p99']:.4f}",
                     f"{x['peak_rss_mb']:.1f}", verdict])
    return header, rows


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
    return f"{t['name']}{hw}; budgets: " + ", ".join(f"{k} = {v}" for k, v in t.get("budgets", {}).items())


def machine_line(report: dict) -> str:
    """Where the benchmark ran, as a sentence (empty when the report records no machine)."""
    m = report.get("machine") or {}
    if not m:
        return ""
    isa = ", ".join(k for k, v in (m.get("isa") or {}).items() if v) or "none recorded"
    return (f"Measured on {m.get('cpu', '?')} ({m.get('architecture', '?')}), {m.get('cores', '?')} cores "
            f"(ISA: {isa}), onnxruntime {m.get('onnxruntime', '?')}.")


def render_markdown(report: dict) -> str:
    lines = ["# edgedistill report", "", f"Target: **{target_line(report)}**", "",
             f"Deliverable: **{report['deliverable']}**"]
    if report.get("deliverable_reason"):
        lines += ["", f"Why: {report['deliverable_reason']}"]
    lines += ["", "## Warnings", ""] + ([f"- {w}" for w in report["warnings"]] or ["None."])
    if report["comparisons"]:
        lines += ["", f"## Against the teacher ({report['comparisons'][0]['teacher']})", "",
                  *_md_table(*comparisons_table(report))]
    lines += ["", "## Models", ""] + ([machine_line(report), ""] if machine_line(report) else [])
    lines += _md_table(*models_table(report))
    return "\n".join(lines) + "\n"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def write_report(ctx, metrics: dict, bench: dict, model_files: dict, curves: dict | None = None,
                 tolerance: float = 1.0, favour: str = "latency") -> list[Path]:
    """Write ``report.json``, ``report.md``, the PNG plots and a self-contained ``report.html``.

    ``curves``: a label (``teacher``, ``distill``, ``qat_observe``...) -> the stage's ``curves.csv``;
    absent and empty files are left out.
    """
    from .plots import plot_report, render_html

    report = build_report(ctx.target, metrics, bench, model_files, ctx.run_dir, tolerance=tolerance, favour=favour)
    out = ctx.run_dir / "report"
    pngs = plot_report(report, out, curves=curves)
    md = render_markdown(report) + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    return [_io.write_json(out / "report.json", report), _io.write_text(out / "report.md", md),
            *pngs, render_html(report, pngs, out / "report.html")]


def deliverable_entry(report: dict) -> dict:
    return next(m for m in report["models"] if m["name"] == report["deliverable"])
