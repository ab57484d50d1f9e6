"""The built-in pipeline stages, in run order. Each reads its inputs from the run folder, calls the
stage's one public verb, and returns the files it wrote (relative to the run folder)."""

from __future__ import annotations

import json
from pathlib import Path

from . import _io
from .pipeline import RunContext, stage

MODEL_FILES = {  # name -> (stage, file, role, precision)
    "teacher_fp32": ("export", "teacher_fp32.onnx", "teacher", "fp32"),
    "student_fp32": ("export", "student_fp32.onnx", "student", "fp32"),
    "student_int8": ("ptq", "student_ptq_int8.onnx", "student", "int8"),
    "student_qat_int8": ("qat", "student_qat_int8.onnx", "student", "int8"),
}


def _rel(ctx: RunContext, p: Path) -> str:
    return str(Path(p).relative_to(ctx.run_dir))


def _files(ctx: RunContext, stage_name: str) -> list[str]:
    """Every file a stage wrote into its folder (checkpoints for resuming left out)."""
    folder = ctx.path(stage_name)
    return sorted(_rel(ctx, p) for p in folder.rglob("*") if p.is_file() and "checkpoints" not in p.parts)


@stage("teacher", "01_teacher", sections=("data", "teacher"))
def _teacher(ctx: RunContext) -> list[str]:
    ctx.task.prepare_teacher(ctx.recipe, ctx.splits, ctx.path("teacher"), ctx.trust_checkpoint, ctx.log)
    return _files(ctx, "teacher")


@stage("student", "02_student", sections=("data", "student"), deps=("teacher",))
def _student(ctx: RunContext) -> list[str]:
    ctx.task.build_student(ctx.recipe, ctx.splits, ctx.path("student"), teacher_path=ctx.path("teacher", "model.pt"))
    return _files(ctx, "student")


@stage("distill", "03_distill", sections=("data", "distill"), deps=("teacher", "student"))
def _distill(ctx: RunContext) -> list[str]:
    from .distill.stage import distill

    teacher = ctx.task.load_teacher(ctx.recipe, ctx.splits, ctx.path("teacher"))
    student = ctx.task.load_student(ctx.recipe, ctx.splits, ctx.path("student", "model.pt"))
    distill(student, teacher, ctx.splits, ctx.recipe, ctx.path("distill"), task=ctx.task, log=ctx.log)
    return [_rel(ctx, ctx.path("distill", f)) for f in ("model.pt", "curves.csv", "meta.json")]


def _disabled(ctx: RunContext, name: str, why: str) -> list[str]:
    ctx.log(f"[{name}] {why}")
    return [_rel(ctx, _io.write_json(ctx.path(name, "meta.json"), {"enabled": False, "reason": why}))]


@stage("qat", "04_qat", sections=("data", "qat", "export"), deps=("teacher", "distill"))
def _qat(ctx: RunContext) -> list[str]:
    cfg = ctx.recipe.qat
    if not cfg.enabled:
        return _disabled(ctx, "qat", "qat.enabled is false: no QAT model (set it true to train one)")
    from .quant.stage import ONNX_NAME, run_qat

    student = ctx.task.load_student(ctx.recipe, ctx.splits, ctx.path("distill", "model.pt"))
    teacher = ctx.task.load_teacher(ctx.recipe, ctx.splits, ctx.path("teacher")) if cfg.teacher == "teacher" else None
    run_qat(student, teacher, ctx.splits, cfg, ctx.path("qat"), batch_size=ctx.recipe.data.batch_size,
            seed=ctx.recipe.seed, device=ctx.recipe.distill.device, opset=ctx.recipe.export.opset or ctx.task.opset,
            workers=ctx.recipe.data.workers)
    return [_rel(ctx, ctx.path("qat", f)) for f in ("model.pt", ONNX_NAME, "meta.json")]


@stage("export", "05_export", sections=("export",), deps=("teacher", "distill"))
def _export(ctx: RunContext) -> list[str]:
    from .export import export_onnx

    cfg, splits, task = ctx.recipe.export, ctx.splits, ctx.task
    meta = {"normalization": json.dumps(splits.normalization), "labels": json.dumps(splits.labels),
            "dataset": splits.name, "task": task.name, "producer": "edgedistill"}
    out = {}
    for role, load, ckpt in (("teacher", task.load_teacher, ctx.path("teacher")),
                             ("student", task.load_student, ctx.path("distill", "model.pt"))):
        model = load(ctx.recipe, splits, ckpt)
        x = task.export_inputs(model, splits.test, cfg.parity_samples)  # a bounded sample, not the split
        out[f"{role}_fp32"] = export_onnx(model, ctx.path("export", f"{role}_fp32.onnx"), x, cfg,
                                          {**meta, "role": role}, exporter=task.exporter, opset=task.opset)
        del model
    _io.write_json(ctx.path("export", "meta.json"), out)
    return [_rel(ctx, ctx.path("export", f)) for f in ("teacher_fp32.onnx", "student_fp32.onnx", "meta.json")]


@stage("ptq", "06_ptq", sections=("data", "ptq"), deps=("export",))
def _ptq(ctx: RunContext) -> list[str]:
    cfg = ctx.recipe.ptq
    if not cfg.enabled:
        return _disabled(ctx, "ptq", "ptq.enabled is false: no PTQ model (set it true to quantize the student)")
    from .quant.ptq import calibration_sample, quantize_int8

    calib = calibration_sample(ctx.splits.train, cfg.samples, ctx.recipe.seed)  # read batch by batch by the calibrator
    # The fallback judges the metric on the validation split, never on the test split it is reported on.
    held_out = ctx.splits.val if len(ctx.splits.val.y) and (ctx.splits.val.y >= 0).any() else ctx.splits.test
    task = ctx.task
    mode = task.ptq_mode if cfg.mode == "auto" else cfg.mode
    meta = quantize_int8(ctx.path("export", "student_fp32.onnx"), ctx.path("ptq", "student_ptq_int8.onnx"),
                         calib if mode == "static" else None, cfg, mode=mode, fusion=task.fusion_args(),
                         evaluate=(lambda path: task.metric(path, held_out)["value"]) if cfg.max_drop is not None else None)
    _io.write_json(ctx.path("ptq", "calibration.json"), {"samples": len(calib) if mode == "static" else 0,
                                                        "method": cfg.calibration if mode == "static" else "dynamic",
                                                        "source": "train split", "seed": ctx.recipe.seed})
    _io.write_json(ctx.path("ptq", "meta.json"), meta)
    return [_rel(ctx, ctx.path("ptq", f)) for f in ("student_ptq_int8.onnx", "calibration.json", "meta.json")]


def _artifacts(ctx: RunContext) -> dict[str, Path]:
    return {name: ctx.path(st, f) for name, (st, f, _, _) in MODEL_FILES.items() if ctx.path(st, f).exists()}


@stage("verify", "07_verify", sections=("data",), deps=("qat", "export", "ptq"))
def _verify(ctx: RunContext) -> list[str]:
    from .verify import verify

    roles = {name: role for name, (_, _, role, _) in MODEL_FILES.items()}
    metrics = verify({k: str(v) for k, v in _artifacts(ctx).items()}, ctx.splits.test, ctx.task, roles)
    _io.write_json(ctx.path("verify", "metrics.json"), {"split": "test", "models": metrics})
    return [_rel(ctx, ctx.path("verify", "metrics.json"))]


@stage("bench", "08_bench", sections=("bench",), deps=("qat", "export", "ptq"), uses_target=True)
def _bench(ctx: RunContext) -> list[str]:
    from .bench import benchmark

    cfg = ctx.recipe.bench
    arts = _artifacts(ctx)
    result = benchmark([str(p) for p in arts.values()], target=ctx.target, runs=cfg.runs, warmup=cfg.warmup,
                       min_seconds=cfg.min_seconds, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                       deliverable=str(arts.get("student_qat_int8") or arts.get("student_int8") or arts["student_fp32"]))
    result["names"] = list(arts)
    _io.write_json(ctx.path("bench", "bench.json"), result)
    return [_rel(ctx, ctx.path("bench", "bench.json"))]


@stage("report", "report", sections=("report",), deps=("distill", "verify", "bench"), uses_target=True)
def _report(ctx: RunContext) -> list[str]:
    from .report import write_report

    metrics = _io.read_json(ctx.path("verify", "metrics.json"))["models"]
    bench = _io.read_json(ctx.path("bench", "bench.json"))
    files = write_report(ctx, metrics, bench, MODEL_FILES, curves=_curves(ctx), tolerance=ctx.recipe.report.tolerance,
                         favour=ctx.recipe.report.favour)
    return [_rel(ctx, p) for p in files]


def _curves(ctx: RunContext) -> dict[str, Path]:
    """Where each training stage writes its ``curves.csv``: the teacher (only when trained), distill (header-only
    when distill.epochs = 0) and QAT (one per phase, ``04_qat/observe``, ``04_qat/frozen``). The report leaves
    out the absent and empty ones."""
    found = [p for p in ctx.path("qat").rglob("curves.csv") if "checkpoints" not in p.parts]
    qat = {f"qat_{p.parent.name}": p for p in sorted(found, key=lambda p: (p.parent.name == "frozen", str(p)))}  # run order
    return {"teacher": ctx.path("teacher", "curves.csv"), "distill": ctx.path("distill", "curves.csv"), **qat}


@stage("bundle", "bundle", sections=("data", "teacher", "student"), deps=("report",), uses_target=True)
def _bundle(ctx: RunContext) -> list[str]:
    from .bundle import write_bundle
    from .report import deliverable_entry

    report = _io.read_json(ctx.run_dir / "report" / "report.json")
    best = deliverable_entry(report)
    splits, teacher_m = ctx.splits, next(m for m in report["models"] if m["role"] == "teacher")
    metadata = {
        "name": f"{ctx.recipe.name}-{best['name']}", **ctx.task.bundle_metadata(splits),
        "metric": best["metric"], "precision": best["precision"], "target": ctx.target.name,
        "teacher": f"{ctx.recipe.teacher.arch} {ctx.recipe.teacher.params}",
        "execution_provider": ctx.target.execution_provider,
    }
    card = {
        "name": metadata["name"], "description": (
            f"the {ctx.recipe.teacher.arch} teacher itself, compressed with edgedistill, {best['precision'].upper()}."
            if ctx.recipe.student.arch == "teacher" else f"{ctx.recipe.student.arch} student distilled from a "
            f"{ctx.recipe.teacher.arch} teacher with edgedistill, {best['precision'].upper()}."),
        "metric": best["metric"], "size_mb": best["size_mb"], "latency_ms": best["latency_ms"],
        "peak_rss_mb": best["peak_rss_mb"], "threads": ctx.target.threads, "machine": report.get("machine", {}),
        "teacher": f"{ctx.recipe.teacher.arch} ({teacher_m['metric']['name']} {teacher_m['metric']['value']:.4f})",
        "target": ctx.target.name, "dataset": splits.name, "precision": best["precision"],
    }
    result = write_bundle(ctx.run_dir / best["path"], ctx.path("bundle"), metadata=metadata, model_card=card,
                          extra_files=[str(p) for p in ctx.task.bundle_files(best["role"])],
                          execution_provider=ctx.target.execution_provider,
                          target_platform="arm" if ctx.target.architecture != "x86_64" else "amd64")
    return [_rel(ctx, ctx.path("bundle", f)) for f in sorted(result["files"])] + [_rel(ctx, ctx.path("bundle", "metadata.json"))]
