"""QAT stage: fine-tune a fake-quantized copy of the student with distillation, then export INT8.

The FP32 student (or the teacher) teaches its own fake-quantized copy through the same training
loop and KD loss the distill stage uses. Activation ranges are set by a few calibration passes,
move (moving average) for ``freeze_observers_epoch`` epochs and are then frozen for the rest.
The converted model is exported with INT8 weight initializers, and ONNX Runtime's INT8 outputs
must agree with the PyTorch fake-quant model on the held-out split (top-1 >= ``min_agreement``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from .. import _io, distributed as dist
from ..data import SampleSet, Splits
from ..data.core import as_samples
from ..distill.losses import LossContext, build_loss
from ..distill.train import FitConfig, Term, evaluate_accuracy, fit
from ..errors import StageError
from ..models import save_checkpoint
from .qat import QATConfig, convert_qat, export_qat_onnx, freeze_observers_, prepare_qat
from .ptq import kernels_vs_graph, require_precise_session
from ._fakequant import ActFakeQuant

def run_qat(student: nn.Module, teacher: Optional[nn.Module], splits: Splits, cfg: QATConfig,
            out_dir: str | os.PathLike, *, batch_size: int = 64, seed: int = 0, device: str = "auto",
            opset: int = 18, workers: Optional[int] = None, onnx_path: str | os.PathLike | None = None) -> dict:
    """Train, convert and export the QAT student; write ``model.pt``, ``meta.json`` and the INT8 ONNX file
    (``onnx_path``, default ``<out_dir>/student_qat_int8.onnx``) into ``out_dir``.

    ``teacher`` is used when ``cfg.teacher == "teacher"``; with ``"fp32_student"`` a frozen copy of
    ``student`` teaches and ``teacher`` may be None. Returns the stage's meta record.
    """
    out_dir = Path(out_dir)
    student = student.cpu().eval()
    if cfg.teacher == "teacher":
        if teacher is None:
            raise StageError("qat.teacher is 'teacher' but no teacher model was given; pass it or set "
                             "qat.teacher = \"fp32_student\".")
        guide = teacher
    else:
        guide = copy.deepcopy(student).eval()
    torch.manual_seed(seed)
    qmodel = prepare_qat(student, cfg)
    _calibrate(qmodel, splits.train, cfg.calibration_batches, batch_size, seed)

    ctx = LossContext(alpha=cfg.alpha, temperature=cfg.temperature, num_classes=splits.num_classes,
                      batch_size=batch_size)
    terms = [Term("kd", build_loss("kd", {}, ctx, "qat"))]
    phases = [("observe", min(cfg.freeze_observers_epoch, cfg.epochs)),
              ("frozen", cfg.epochs - min(cfg.freeze_observers_epoch, cfg.epochs))]
    history = []
    for name, epochs in phases:
        if name == "frozen":
            freeze_observers_(qmodel)
        if epochs == 0:
            continue
        fit_cfg = FitConfig.from_section(cfg, desc=f"qat-{name}", batch_size=batch_size, seed=seed, workers=workers,
                                         epochs=epochs, device=device, scheduler="cosine")
        result = fit(qmodel, splits.train, fit_cfg, terms, out_dir / name, teacher=guide, val=splits.val)
        history += [{**row, "phase": name} for row in result.history]

    if not dist.is_main():  # under torchrun rank 0 alone converts, exports, checks and writes
        return {}
    final = convert_qat(qmodel)
    save_checkpoint(out_dir / "model.pt", final)
    example = torch.from_numpy(splits.test.read(np.arange(min(2, len(splits.test)))))
    onnx_path = Path(onnx_path) if onnx_path is not None else out_dir / "student_qat_int8.onnx"
    export = export_qat_onnx(final, onnx_path, example, opset=opset)
    parity = check_int8_parity(final, onnx_path, splits.test, cfg.min_agreement)
    kernels = kernels_vs_graph(onnx_path, splits.train)  # and the session config the file needs, as after PTQ
    meta = {
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "export": export, "parity": parity, "history": history, "kernels_vs_graph": kernels,
        "ort_session_config": require_precise_session(onnx_path, kernels),
        "test_accuracy_fp32_torch": evaluate_accuracy(student, splits.test),
        "test_accuracy_fakequant_torch": evaluate_accuracy(final, splits.test),
    }
    _io.write_json(out_dir / "meta.json", meta)
    return meta


def check_int8_parity(model: nn.Module, onnx_path: str | os.PathLike, x: SampleSet | np.ndarray,
                      min_agreement: float) -> dict:
    """Top-1 agreement of the exported INT8 graph with the PyTorch fake-quant model, a batch at a time; StageError
    below ``min_agreement``. The gate runs the graph with ONNX Runtime's optimizations off, which computes the QDQ
    graph's own arithmetic: it catches an export that does not simulate the model. The fused INT8 kernels' agreement
    in edgedistill's session (:data:`~edgedistill.ort_session.PRECISE_INT8`, which every later stage uses) is
    recorded beside it, not gated."""
    from ..verify import model_session

    x = as_samples(x)
    graph, kernels = model_session(onnx_path, graph_arithmetic=True), model_session(onnx_path)
    name = graph.get_inputs()[0].name
    same = same_kernels = max_abs = 0.0
    with torch.no_grad():
        for start in range(0, len(x), 256):
            xb = x.read(np.arange(start, min(start + 256, len(x))))
            ref = model(torch.from_numpy(xb)).numpy()
            got, fused = graph.run(None, {name: xb})[0], kernels.run(None, {name: xb})[0]
            same += float((got.argmax(1) == ref.argmax(1)).sum())
            same_kernels += float((fused.argmax(1) == ref.argmax(1)).sum())
            max_abs = max(max_abs, float(np.max(np.abs(got - ref))))
    agreement = same / max(1, len(x))
    record = {"samples": int(len(x)), "top1_agreement": agreement, "max_abs_diff": max_abs,
              "min_agreement": min_agreement, "kernels_top1_agreement": same_kernels / max(1, len(x))}
    if agreement < min_agreement:
        raise StageError(f"qat: the exported INT8 graph agrees with the PyTorch fake-quant model on only "
                         f"{agreement:.2%} of {len(x)} samples (< {min_agreement:.2%}); the export does not "
                         "simulate the model, report this with the model.")
    return record


@torch.no_grad()
def _calibrate(model: nn.Module, x: SampleSet, batches: int, batch_size: int, seed: int) -> None:
    """Forward ``batches`` batches with only the activation observers in training mode (dropout off)."""
    model.eval()
    for mod in model.modules():
        if isinstance(mod, ActFakeQuant):
            mod.train()
    order = np.random.default_rng(seed).permutation(len(x))
    for b in range(max(batches, 1)):
        idx = np.sort(order[b * batch_size:(b + 1) * batch_size])
        if len(idx) == 0:
            break
        model(torch.from_numpy(x.read(idx)))
    model.train()
