"""Report stage: ``report.json`` (the stable contract other tools read), ``report.md``, ``report.html``, plots.

What the report concludes is computed once, here, into ``report.json``: each model's budget verdict and the
deliverable and why (:mod:`edgedistill.budgets`), each student against the teacher
(:func:`compare_with_teacher`) and the warnings (:func:`report_warnings`). ``report.md`` and ``report.html``
(:mod:`edgedistill.report_render`) only format it; :mod:`edgedistill.plots` draws its figures.
"""

from __future__ import annotations

from pathlib import Path

from . import _io, _schema
from .budgets import TIE_FRACTION, choose_deliverable, judge, misses
from .litert import runtime_of
from .ort_session import PRECISE_INT8, config_text, default_session_differs
from .sizing import knob_text
from .targets import Target

STUDENT_GAP_POINTS = 5.0  # a student more than this many metric points below its teacher is warned about


def build_report(target: Target, metrics: dict, bench: dict, models: dict, run_dir: Path,
                 tolerance: float = 1.0, extra: dict | None = None, favour: str = "latency") -> dict:
    """Assemble ``report.json``'s content from the verify metrics and the benchmark.

    ``models``: name -> ``(path, role, precision)`` of every model the run wrote; ``metrics`` (verify) and
    ``bench["models"]`` hold the same files, found by path. Each model is judged against the target's budgets
    by :func:`edgedistill.budgets.judge`; the deliverable is the students' :func:`choose_deliverable`, with
    ``deliverable_reason`` saying why. ``comparisons`` and ``warnings`` are added by :func:`add_findings`.
    """
    by_path = {str(Path(m["path"]).resolve()): m for m in bench["models"]}
    indicative = bool(bench.get("latency_indicative"))  # measured off the target: p90 verdicts do not gate
    entries = []
    for name, (path, role, precision) in models.items():
        if name not in metrics:
            continue
        b = by_path[str(Path(path).resolve())]
        entry = {
            "name": name, "role": role, "precision": precision, "runtime": runtime_of(path),
            "path": str(Path(path).resolve().relative_to(run_dir.resolve())),
            "metric": metrics[name]["metric"], "size_mb": round(b["size_mb"], 6),
            "latency_ms": {k: round(b["latency_ms"][k], 4) for k in ("p50", "p90", "p99", "mean")}
            | ({"ci95": {q: [round(v, 4) for v in b["latency_ms"]["ci95"][q]] for q in ("p50", "p90")}}
               if "ci95" in b["latency_ms"] else {}),
            "peak_rss_mb": round(b["peak_rss_mb"], 2),
        }
        entry["verdict"] = judge(entry, target.budgets, latency_indicative=indicative)
        entry["violations"] = misses(entry["verdict"], entry["metric"]["name"])
        entry["indicative_misses"] = misses(entry["verdict"], entry["metric"]["name"], indicative=True)
        entry["within_budget"] = not entry["violations"]
        entries.append(entry)
    runtimes = target.runtimes
    candidates = [e for e in entries if e["role"] != "student" or e["runtime"] in runtimes]
    deliverable, reason = choose_deliverable(candidates, target.budgets, tolerance, favour, latency_indicative=indicative)
    report = {
        "target": {"name": target.name, "architecture": target.architecture, "cores": target.cores,
                   "budgets": _schema.to_dict(target.budgets), "runtime": target.runtime},
        "deliverable": deliverable,
        "deliverable_reason": reason,
        "tolerance_points": tolerance,
        "favour": favour,
        "models": entries,
        "machine": bench.get("machine", {}),
        "host_matches_target": bench.get("host_matches_target"),
        "latency_indicative": indicative,
    }
    if len(runtimes) > 1:  # runtime = "both": the deliverable, and the same rule's choice in the other runtime
        chosen_rt = next(e["runtime"] for e in entries if e["name"] == deliverable)
        report["deliverable_by_runtime"] = {chosen_rt: deliverable} | {
            rt: choose_deliverable([e for e in candidates if e["role"] != "student" or e["runtime"] == rt],
                                   target.budgets, tolerance, favour, latency_indicative=indicative)[0]
            for rt in runtimes if rt != chosen_rt and any(e["role"] == "student" and e["runtime"] == rt for e in entries)}
    if bench.get("remote"):  # measured on a device over SSH (the target's `remote`)
        report["remote"] = bench["remote"]
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
    slower than its FP32 student, a default ONNX Runtime session that changes the PTQ file's results (and the session
    config it then needs), a benchmark that did not
    run on the target, a sized student whose deliverable still misses a budget (and what ``--refit`` would train).
    Needs ``comparisons``."""
    return [*_gap_warnings(report["comparisons"]), *_int8_warnings(report), *_kernel_warnings(report),
            *_host_warnings(report), *_refit_warnings(report)]


def _kernel_warnings(report: dict) -> list[str]:
    """ONNX Runtime's default session on an x86 CPU without VNNI changing the PTQ file's results (``int8_kernels``,
    :func:`edgedistill.quant.ptq.kernels_vs_graph`): the session config an app must then set."""
    kernels = report.get("int8_kernels")
    if not default_session_differs(kernels):
        return []
    default = kernels["default_session"]
    return [f"ONNX Runtime's default session on this x86 CPU without VNNI changes the PTQ file's top-1 on "
            f"{100 * (1 - default['top1_agreement_with_precise']):.1f} % of {kernels['samples']} "
            "calibration samples: its U8S8 kernels sum 8-bit products in saturating 16-bit pairs (ONNX Runtime's "
            f"quantization docs). The file records the session config it needs, {config_text(PRECISE_INT8)} "
            "(exact U8U8 kernels on such CPUs, slower; no effect with VNNI or on Arm), which edgedistill's "
            "metrics and benchmark use and the bundle's model card names: an app on such a CPU must set it, "
            "or quantize with ptq.reduce_range = true (7-bit weights, fast and exact there, less accurate)."]


def _refit_warnings(report: dict) -> list[str]:
    """A sized student (student.size = "fit") whose delivered model still misses a budget: by how much, and the
    next candidate down that ``edgedistill run --refit`` would train."""
    z = report.get("sizing")
    best = next((m for m in report["models"] if m["name"] == report["deliverable"]), None) if z else None
    hardware = misses({k: v for k, v in best["verdict"].items() if k != "min_metric"}) if best else []
    if not hardware:  # a metric below min_metric is not what a smaller student fixes
        return []
    down = z.get("next_down")
    then = (f"the next candidate down, {knob_text(down['knobs'])}, measured "
            f"{down['size_mb']:.3f} MB and p90 {down['p90_ms']:.3f} ms untrained ({down['precision'].upper()}); "
            "`edgedistill run --refit` trains it from the student stage on." if down else
            "no smaller candidate was measured within the budgets; raise student.fit_margin or add smaller values "
            "to the family's search space.")
    return [f"The sized student's deliverable {best['name']} misses {'; '.join(hardware)} after training "
            f"(sized with a {100 * z['margin']:g} % margin); {then}"]


def _gap_warnings(comparisons: list[dict]) -> list[str]:
    far = [c for c in comparisons if c["points_lost"] > STUDENT_GAP_POINTS]
    if not far:
        return []
    c0 = far[0]
    each = ", ".join(f"{c['name']} by {c['points_lost']:.1f} ({c['value']:.4f})" for c in far)
    return [f"The student is far below its teacher {c0['teacher']} ({c0['metric']} {c0['teacher_value']:.4f}): {each} "
            f"{c0['metric']} points, more than the {STUDENT_GAP_POINTS:g}-point warning threshold; train the student "
            "longer, make it wider, or try another distillation loss."]


_INT8_WHY = {
    "onnxruntime": "an INT8 part of an ONNX Runtime graph pays a quantize and a layout transpose where it starts and the "
                   "reverse where it ends (about a microsecond each), which layers of a few microseconds do not win "
                   "back, and ORT's INT8 depthwise and few-channel convolutions are slower than its FP32 ones "
                   "(ptq.speed_rules keeps those in FP32; docs/quantization.md)",
    "litert": "each call quantizes the float input and dequantizes the output with the int8 tensors' parameters "
              "(the bench's int8_io_ms), which a model of a few microseconds does not win back",
}


_PRECISE_WHY = (" and on this x86 CPU without VNNI the PTQ file runs in the exact U8U8 kernels it asks for (see the "
                "warning on its session config; ptq.reduce_range = true keeps the fast U8S8 ones)")


def _int8_warnings(report: dict) -> list[str]:
    """An INT8 student slower at p90 than the FP32 student of its own runtime: one sentence per runtime."""
    models, out = report["models"], []
    for runtime, why in _INT8_WHY.items():
        if runtime == "onnxruntime" and default_session_differs(report.get("int8_kernels")):
            why += _PRECISE_WHY
        mine = [m for m in models if m["role"] == "student" and m.get("runtime", "onnxruntime") == runtime]
        fp32 = next((m for m in mine if m["precision"] == "fp32"), None)
        if fp32 is None:
            continue
        base = fp32["latency_ms"]["p90"]
        slow = [m for m in mine if m["precision"] == "int8" and m["latency_ms"]["p90"] > base * (1 + TIE_FRACTION)]
        if not slow:
            continue
        each = ", ".join(f"{m['name']} {m['latency_ms']['p90'] / base:.2f}x slower ({m['latency_ms']['p90']:.3f} ms)"
                         for m in slow)
        out.append(f"INT8 is slower at p90 than the FP32 student {fp32['name']} ({base:.3f} ms) on this host: {each}. "
                   f"Here quantization buys a smaller file, not speed: {why}. INT8 pays off on CPUs with fast INT8 "
                   "instructions (AVX-512 VNNI, Arm dot-product) and larger layers.")
    return out


def _host_warnings(report: dict) -> list[str]:
    t, m = report["target"], report.get("machine") or {}
    host, want = (m.get("architecture"), m.get("cores")), (t.get("architecture"), t.get("cores"))
    known = None not in host and None not in want
    if (known and host == want) or (not known and report.get("host_matches_target") is not False):
        return []
    machine = f"the remote {report['remote']['host']}" if report.get("remote") else "this machine"
    where = (f"{machine} ({host[0]}, {host[1]} cores), not on the target {t['name']} ({want[0]}, {want[1]} cores)"
             if known else f"{machine}, not on the target {t['name']}")
    gate = (" The p90 verdicts are indicative: they do not gate (size and RAM still do)."
            if report.get("latency_indicative") else "")
    return [f"The benchmark ran on {where}: latency and memory are that machine's, unscaled; run "
            "`edgedistill bench` on the device itself (or name it as the target's `remote`) for its figures." + gate]


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b > 0 else None


def write_report(out: Path, report: dict, curves: dict | None = None) -> list[Path]:
    """Write ``report.json``, ``report.md``, the PNG plots and a self-contained ``report.html`` into ``out``.

    ``report``: :func:`build_report`'s content. ``curves``: a label (``teacher``, ``distill``,
    ``qat_observe``...) -> the stage's ``curves.csv``; absent and empty files are left out.
    """
    from .plots import plot_report
    from .report_render import render_html, render_markdown

    pngs = plot_report(report, out, curves=curves)
    md = render_markdown(report) + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    return [_io.write_json(out / "report.json", report), _io.write_text(out / "report.md", md),
            *pngs, render_html(report, pngs, out / "report.html")]


def deliverable_entry(report: dict) -> dict:
    return next(m for m in report["models"] if m["name"] == report["deliverable"])
