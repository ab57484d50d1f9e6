"""Export stage: ``torch.onnx.export(dynamo=True)`` with a dynamic batch axis, the ONNX checker, and
a parity check of ONNX Runtime against PyTorch on real inputs that fails the stage on disagreement."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from . import _io
from .errors import StageError
from .recipe import ExportConfig


def export_onnx(model: nn.Module, path: str | os.PathLike, inputs: np.ndarray, cfg: ExportConfig,
                metadata: dict | None = None) -> dict:
    """Export ``model`` to ``path`` and check it; ``inputs`` are real samples (N x ...) used for parity."""
    path = Path(path)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # torchvision notices
    model = model.eval().cpu()
    example = torch.from_numpy(np.ascontiguousarray(inputs[:2]))
    batch = torch.export.Dim("batch", min=1, max=4096)
    tmp = path.with_name(f".{path.name}.export.onnx")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (example,), dynamo=True, external_data=False, opset_version=cfg.opset,
                input_names=["input"], output_names=["output"], dynamic_shapes=({0: batch},), verbose=False,
            )
        proto = program.model_proto
    except Exception as e:  # the exporter raises many types; report the first line
        raise StageError(f"export: torch.onnx.export failed ({str(e).strip().splitlines()[0][:200]}); "
                         "check that the model traces with torch.export.") from None
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    _io.write_bytes(path, proto.SerializeToString())
    onnx.checker.check_model(str(path), full_check=True)
    parity = check_parity(model, path, inputs[: cfg.parity_samples], cfg.parity_atol, cfg.parity_rtol)
    return {"path": str(path), "opset": cfg.opset, "size_mb": _io.file_size_mb(path), "parity": parity}


def check_parity(model: nn.Module, path: str | os.PathLike, inputs: np.ndarray, atol: float, rtol: float) -> dict:
    """Run the same real inputs through PyTorch and ONNX Runtime; raise StageError when they disagree."""
    from .verify import onnx_predict

    x = np.ascontiguousarray(inputs.astype(np.float32))
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = onnx_predict(path, x)
    max_abs = float(np.max(np.abs(ref - got)))
    top1 = float(np.mean(ref.argmax(1) == got.argmax(1))) if ref.ndim == 2 else 1.0
    ok = bool(np.allclose(got, ref, atol=atol, rtol=rtol))
    result = {"samples": len(x), "max_abs_diff": max_abs, "top1_agreement": top1, "atol": atol, "rtol": rtol, "ok": ok}
    if not ok:
        raise StageError(f"export: {Path(path).name} disagrees with PyTorch (max |diff| {max_abs:.3g} > atol {atol}); "
                         "the exported graph is wrong — check for unsupported ops or raise export.parity_atol.")
    return result
