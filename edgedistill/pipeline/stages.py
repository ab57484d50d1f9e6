"""The built-in pipeline stages, in run order. Each reads its inputs from the run folder, asks the recipe's
task how, calls the stage's one public verb and writes into its own folder; every file there is its output
(see :mod:`.stage`)."""

from __future__ import annotations

import json

from .. import _io
from .stage import ModelFile, RunContext, stage


def _sized(recipe, stage_dir):
    """The recipe with the student's params the size stage chose (as it is when the stage did not size)."""
    from ..sizing import sized_recipe

    return sized_recipe(recipe, stage_dir)


@stage("size", "00_size", sections=("data", "student", "target", "ptq", "export", "bench.batch_size", "bench.seq_len"),
       resolves=_sized)
def _size(ctx: RunContext) -> None:
    """Size the student to the target's budgets before any training (student.size = "fit")."""
    if ctx.recipe.student.size != "fit":
        return _disabled(ctx, 'student.size = "params": the student is built as the recipe gives it (set "fit" to '
                              "size it to the target's budgets)")
    from ..sizing import SIZING_FILE, size_student

    result = size_student(ctx.recipe, ctx.splits, ctx.task, ctx.target, ctx.path("size"), ctx.log)
    _io.write_json(ctx.path("size", SIZING_FILE), result)


@stage("teacher", "01_teacher", sections=("data", "teacher", "distill.device", "distill.amp"), trains=True)
def _teacher(ctx: RunContext) -> None:
    """Load the user's teacher as given, or train one."""
    ctx.task.prepare_teacher(ctx.recipe, ctx.splits, ctx.path("teacher"), ctx.trust_checkpoint, ctx.log)


@stage("student", "02_student", sections=("data", "teacher", "student"), deps=("teacher",))
def _student(ctx: RunContext) -> None:
    """Build the untrained student (or copy the teacher, student.arch = "teacher")."""
    ctx.task.build_student(ctx.recipe, ctx.splits, ctx.path("student"), teacher_path=ctx.path("teacher", "model.pt"))


@stage("distill", "03_distill", sections=("data", "teacher", "student", "distill"), deps=("teacher", "student"),
       trains=True)
def _distill(ctx: RunContext) -> None:
    """Train the student from the teacher with the recipe's losses."""
    from ..distill.stage import distill

    teacher = ctx.task.load_teacher(ctx.recipe, ctx.splits, ctx.path("teacher"))
    student = ctx.task.load_student(ctx.recipe, ctx.splits, ctx.path("student", "model.pt"))
    # The teacher cache is the run folder's on every rank: under torchrun each rank writes its shards there.
    distill(student, teacher, ctx.splits, ctx.recipe, ctx.path("distill"), cache_dir=ctx.run_dir / "teacher_cache",
            task=ctx.task, log=ctx.log)


def _disabled(ctx: RunContext, why: str) -> None:
    ctx.log(f"[{ctx.stage.name}] {why}")
    _io.write_json(ctx.path(ctx.stage.name, "meta.json"), {"enabled": False, "reason": why})


@stage("qat", "04_qat", sections=("data", "teacher", "student", "qat", "export.opset", "distill.device"),
       deps=("teacher", "distill"), trains=True,
       models=[ModelFile("student_qat_int8", "student_qat_int8.onnx", "student", "int8")])
def _qat(ctx: RunContext) -> None:
    """Fine-tune the distilled student with fake quantization and export its INT8 model."""
    cfg = ctx.recipe.qat
    if not cfg.enabled:
        return _disabled(ctx, "qat.enabled is false: no QAT model (set it true to train one)")
    from ..quant.qat_train import run_qat

    student = ctx.task.load_student(ctx.recipe, ctx.splits, ctx.path("distill", "model.pt"))
    teacher = ctx.task.load_teacher(ctx.recipe, ctx.splits, ctx.path("teacher")) if cfg.teacher == "teacher" else None
    run_qat(student, teacher, ctx.splits, cfg, ctx.path("qat"), batch_size=ctx.recipe.data.batch_size,
            seed=ctx.recipe.seed, device=ctx.recipe.distill.device, opset=ctx.recipe.export.opset or ctx.task.opset,
            workers=ctx.recipe.data.workers, onnx_path=ctx.model_path("student_qat_int8"))


@stage("export", "05_export", sections=("data", "teacher", "student", "export"), deps=("teacher", "distill"),
       models=[ModelFile("teacher_fp32", "teacher_fp32.onnx", "teacher", "fp32"),
               ModelFile("student_fp32", "student_fp32.onnx", "student", "fp32")])
def _export(ctx: RunContext) -> None:
    """Export the teacher and the distilled student to ONNX, checked against PyTorch."""
    from ..export import export_onnx

    cfg, splits, task = ctx.recipe.export, ctx.splits, ctx.task
    meta = {"normalization": json.dumps(splits.normalization), "labels": json.dumps(splits.labels),
            "dataset": splits.name, "task": task.name, "producer": "edgedistill"}
    out = {}
    for role, load, ckpt in (("teacher", task.load_teacher, ctx.path("teacher")),
                             ("student", task.load_student, ctx.path("distill", "model.pt"))):
        model = load(ctx.recipe, splits, ckpt)
        x = task.export_inputs(model, splits.test, cfg.parity_samples)  # a bounded sample, not the split
        out[f"{role}_fp32"] = export_onnx(model, ctx.model_path(f"{role}_fp32"), x, cfg,
                                          {**meta, "role": role}, exporter=task.exporter, opset=task.opset)
        del model
    _io.write_json(ctx.path("export", "meta.json"), out)


@stage("ptq", "06_ptq", sections=("data", "ptq"), deps=("export",),
       models=[ModelFile("student_int8", "student_ptq_int8.onnx", "student", "int8")])
def _ptq(ctx: RunContext) -> None:
    """Quantize the FP32 student to INT8 with ONNX Runtime (calibrated on the training split)."""
    cfg = ctx.recipe.ptq
    if not cfg.enabled:
        return _disabled(ctx, "ptq.enabled is false: no PTQ model (set it true to quantize the student)")
    from ..quant.calibration import calibration_sample
    from ..quant.ptq import quantize_int8

    calib = calibration_sample(ctx.splits.train, cfg.samples, ctx.recipe.seed)  # read batch by batch by the calibrator
    # The fallback judges the metric on the validation split, never on the test split it is reported on.
    held_out = ctx.splits.val if len(ctx.splits.val.y) and (ctx.splits.val.y >= 0).any() else ctx.splits.test
    task = ctx.task
    mode = task.ptq_mode if cfg.mode == "auto" else cfg.mode
    meta = quantize_int8(ctx.model_path("student_fp32"), ctx.model_path("student_int8"),
                         calib if mode == "static" else None, cfg, mode=mode, fusion=task.fusion_args(),
                         evaluate=(lambda path: task.metric(path, held_out)["value"]) if cfg.max_drop is not None else None)
    _io.write_json(ctx.path("ptq", "calibration.json"), {"samples": len(calib) if mode == "static" else 0,
                                                        "method": cfg.calibration if mode == "static" else "dynamic",
                                                        "source": "train split", "seed": ctx.recipe.seed})
    _io.write_json(ctx.path("ptq", "meta.json"), meta)


@stage("litert", "06b_litert", sections=("data", "teacher", "student", "target", "export", "ptq.enabled", "ptq.samples", "qat"),
       deps=("distill", "qat"),
       models=[ModelFile("student_fp32_litert", "student_fp32.tflite", "student", "fp32"),
               ModelFile("student_int8_litert", "student_ptq_int8.tflite", "student", "int8"),
               ModelFile("student_qat_int8_litert", "student_qat_int8.tflite", "student", "int8")])
def _litert(ctx: RunContext) -> None:
    """Convert the students to .tflite for LiteRT (target runtime "litert" or "both"): FP32, PTQ INT8, QAT INT8."""
    if "litert" not in ctx.target.runtimes:
        return _disabled(ctx, f'the target\'s runtime is "{ctx.target.runtime}": no .tflite files (set runtime = '
                              '"litert" or "both" in the target to convert the students for LiteRT)')
    from ..export import export_tflite
    from ..quant.calibration import calibration_sample
    import numpy as np
    import torch

    from ..quant.qat import activation_ranges, float_twin, load_qat

    recipe, splits, task = ctx.recipe, ctx.splits, ctx.task
    student = task.load_student(recipe, splits, ctx.path("distill", "model.pt"))
    x = task.export_inputs(student, splits.test, recipe.export.parity_samples)  # one float array (supports_litert)
    parity = (recipe.export.parity_atol, recipe.export.parity_rtol)
    out = {"student_fp32_litert": export_tflite(student, ctx.model_path("student_fp32_litert"), x, parity=parity)}
    calib = calibration_sample(splits.train, recipe.ptq.samples, recipe.seed)
    if recipe.ptq.enabled:
        out["student_int8_litert"] = export_tflite(student, ctx.model_path("student_int8_litert"), x, calibration=calib)
    qat_model = ctx.path("qat", "model.pt")
    if recipe.qat.enabled and qat_model.exists():  # the QAT's INT8-grid weights and its activation ranges carried over
        qat = load_qat(student, qat_model, recipe.qat)
        ranges = activation_ranges(qat, torch.from_numpy(calib.read(np.array([0]))))
        out["student_qat_int8_litert"] = export_tflite(float_twin(qat), ctx.model_path("student_qat_int8_litert"), x,
                                                       calibration=calib, ranges=ranges)
    _io.write_json(ctx.path("litert", "meta.json"), out)


def _models(ctx: RunContext) -> dict[str, tuple]:
    """Every model the run wrote: name -> (path, role, precision)."""
    from .stage import model_files

    files = model_files()
    return {name: (path, files[name][1].role, files[name][1].precision) for name, path in ctx.written_models().items()}


@stage("verify", "07_verify", sections=("data",), deps=("qat", "export", "ptq", "litert"))
def _verify(ctx: RunContext) -> None:
    """Measure every model's metric on the test split, through its runtime (ONNX Runtime or LiteRT)."""
    from ..verify import verify

    models = _models(ctx)
    metrics = verify({k: str(path) for k, (path, _, _) in models.items()}, ctx.splits.test, ctx.task,
                     {k: role for k, (_, role, _) in models.items()})
    _io.write_json(ctx.path("verify", "metrics.json"), {"split": "test", "models": metrics})


@stage("bench", "08_bench", sections=("bench", "target"), deps=("qat", "export", "ptq", "litert"))
def _bench(ctx: RunContext) -> None:
    """Benchmark every model, interleaved, at the target's threads; each judged against its budgets."""
    from ..bench import benchmark

    cfg, models = ctx.recipe.bench, ctx.written_models()
    result = benchmark([str(p) for p in models.values()], target=ctx.target, runs=cfg.runs, warmup=cfg.warmup,
                       min_seconds=cfg.min_seconds, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                       ci_tolerance=cfg.ci_tolerance, max_seconds=cfg.max_seconds)
    result["names"] = list(models)
    _io.write_json(ctx.path("bench", "bench.json"), result)


@stage("report", "report", sections=("report", "target"), deps=("size", "distill", "qat", "verify", "bench"))
def _report(ctx: RunContext) -> None:
    """Choose the deliverable and write report.json, report.md, report.html and the plots."""
    from ..report import build_report, write_report

    metrics = _io.read_json(ctx.path("verify", "metrics.json"))["models"]
    bench = _io.read_json(ctx.path("bench", "bench.json"))
    cfg = ctx.recipe.report
    distill_meta = ctx.path("distill", "meta.json")  # the auto alpha / temperature search, when there was one
    settings = _io.read_json(distill_meta).get("settings") if distill_meta.exists() else None
    settings = settings if settings and (settings.get("searched") or settings.get("note")) else None
    extra = {"distillation": settings} if settings else {}
    sizing = _sizing(ctx)
    if sizing:
        extra["sizing"] = sizing
    ptq_meta = ctx.path("ptq", "meta.json")  # this host's INT8 kernels against the file's own arithmetic
    kernels = _io.read_json(ptq_meta).get("kernels_vs_graph") if ptq_meta.exists() else None
    if kernels:
        extra["int8_kernels"] = kernels
    report = build_report(ctx.target, metrics, bench, _models(ctx), ctx.run_dir, tolerance=cfg.tolerance,
                          favour=cfg.favour, extra=extra or None)
    write_report(ctx.path("report"), report, curves=_curves(ctx))


def _sizing(ctx: RunContext) -> dict | None:
    """The size stage's record (student.size = "fit"), with its share of the run's stage seconds so far."""
    from ..sizing import sizing_record

    record = sizing_record(ctx.path("size"))
    if record is None:
        return None
    stages_m = _io.read_json(ctx.run_dir / "manifest.json").get("stages", {})
    total = sum(m.get("seconds", 0.0) for m in stages_m.values() if m.get("status") == "done")
    size_s = stages_m.get("size", {}).get("seconds")
    record["share_of_run_seconds"] = round(size_s / total, 4) if size_s and total else None
    return record


def _curves(ctx: RunContext) -> dict:
    """Where each training stage writes its ``curves.csv``: the teacher (only when trained), distill (header-only
    when distill.epochs = 0) and QAT (one per phase, ``04_qat/observe``, ``04_qat/frozen``). The report leaves
    out the absent and empty ones."""
    found = [p for p in ctx.path("qat").rglob("curves.csv") if "checkpoints" not in p.parts]
    qat = {f"qat_{p.parent.name}": p for p in sorted(found, key=lambda p: (p.parent.name == "frozen", str(p)))}  # run order
    return {"teacher": ctx.path("teacher", "curves.csv"), "distill": ctx.path("distill", "curves.csv"), **qat}


@stage("bundle", "bundle", sections=("name", "data", "teacher", "student", "target"), deps=("report",))
def _bundle(ctx: RunContext) -> None:
    """Pack the deliverable for an app: model.onnx and model.ort and/or model.tflite, metadata, model card, the task's
    extra files."""
    from ..bundle import write_bundle
    from ..report import deliverable_entry

    report = _io.read_json(ctx.path("report", "report.json"))
    best = deliverable_entry(report)
    splits, teacher_m = ctx.splits, next(m for m in report["models"] if m["role"] == "teacher")
    recipe, target = ctx.recipe, ctx.target
    metadata = {
        "name": f"{recipe.name}-{best['name']}", **ctx.task.bundle_metadata(splits),
        "metric": best["metric"], "precision": best["precision"], "target": target.name,
        "teacher": f"{recipe.teacher.arch} {recipe.teacher.params}", "execution_provider": target.execution_provider,
    }
    card = {
        "name": metadata["name"], "description": (
            f"the {recipe.teacher.arch} teacher itself, compressed with edgedistill, {best['precision'].upper()}."
            if recipe.student.arch == "teacher" else f"{recipe.student.arch} student distilled from a "
            f"{recipe.teacher.arch} teacher with edgedistill, {best['precision'].upper()}."),
        "metric": best["metric"], "size_mb": best["size_mb"], "latency_ms": best["latency_ms"],
        "peak_rss_mb": best["peak_rss_mb"], "threads": target.threads, "machine": report.get("machine", {}),
        "teacher": f"{recipe.teacher.arch} ({teacher_m['metric']['name']} {teacher_m['metric']['value']:.4f})",
        "target": target.name, "dataset": splits.name, "precision": best["precision"],
    }
    by_name = {m["name"]: m for m in report["models"]}
    also = [ctx.run_dir / by_name[name]["path"] for runtime, name in report.get("deliverable_by_runtime", {}).items()
            if runtime != best.get("runtime", "onnxruntime")]  # runtime = "both": the other runtime's best too
    write_bundle(ctx.run_dir / best["path"], ctx.path("bundle"), metadata=metadata, model_card=card,
                 extra_files=[str(p) for p in ctx.task.bundle_files(best["role"])], also=also,
                 execution_provider=target.execution_provider,
                 target_platform="arm" if target.architecture != "x86_64" else "amd64")
