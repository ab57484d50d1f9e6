"""Export stage: ONNX with dynamic batch (and sequence) axes, the ONNX checker, and a parity check of
ONNX Runtime against PyTorch on real inputs that fails the stage on disagreement.

Inputs are one array (named ``input``) or named arrays (a transformer's ``input_ids`` and
``attention_mask``); the output is always named ``output``, so an app's code does not depend on
which model was delivered. The exporter is ``torch.onnx.export(dynamo=True)``; transformer text
models use the TorchScript exporter, whose graphs ONNX Runtime's transformer optimizer fuses into
Attention / SkipLayerNormalization (measured on MiniLM-L6: 6 Attention fusions against none on the
dynamo graph).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
from torch import nn

from . import _io
from .errors import StageError
from .recipe import ExportConfig

INPUT_NAME, OUTPUT_NAME = "input", "output"  # a one-input model's names in every exported artifact (QAT's too)
_PARITY_BATCH = 64


def _named(inputs: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {INPUT_NAME: inputs} if isinstance(inputs, np.ndarray) else dict(inputs)


def _is_sequence(a: np.ndarray) -> bool:
    """Token inputs ([batch, sequence] integers) get a dynamic sequence axis too."""
    return a.ndim == 2 and np.issubdtype(a.dtype, np.integer)


def export_onnx(model: nn.Module, path: str | os.PathLike, inputs: np.ndarray | dict[str, np.ndarray],
                cfg: ExportConfig, metadata: dict | None = None,
                exporter: Literal["dynamo", "torchscript"] = "dynamo", opset: int = 18) -> dict:
    """Export ``model`` to ``path`` and check it; ``inputs`` are real samples (N x ...) used for parity.
    ``cfg.opset``, when set, overrides ``opset`` (the task's default)."""
    path = Path(path)
    opset = cfg.opset or opset
    feeds = _named(inputs)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # torchvision notices
    model = model.eval().cpu()
    example = tuple(torch.from_numpy(np.ascontiguousarray(v[:2])) for v in feeds.values())
    names = list(feeds)
    tmp = path.with_name(f".{path.name}.export.onnx")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("sequence", min=2, max=4096)
                shapes = tuple({0: batch, 1: seq} if _is_sequence(v) else {0: batch} for v in feeds.values())
                program = torch.onnx.export(model, example, dynamo=True, external_data=False, opset_version=opset,
                                            input_names=names, output_names=[OUTPUT_NAME], dynamic_shapes=shapes,
                                            verbose=False)
                proto = program.model_proto
            else:
                axes = {n: ({0: "batch", 1: "sequence"} if _is_sequence(v) else {0: "batch"}) for n, v in feeds.items()}
                torch.onnx.export(model, example, str(tmp), dynamo=False, opset_version=opset, input_names=names,
                                  output_names=[OUTPUT_NAME], dynamic_axes={**axes, OUTPUT_NAME: {0: "batch"}},
                                  do_constant_folding=True)
                proto = onnx.load(str(tmp))
    except Exception as e:  # the exporter raises many types; report the first line
        raise StageError(f"export: torch.onnx.export failed ({str(e).strip().splitlines()[0][:200]}); "
                         "check that the model traces with torch.export.") from None
    finally:
        tmp.unlink(missing_ok=True)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    _io.write_bytes(path, proto.SerializeToString())
    onnx.checker.check_model(str(path), full_check=True)
    parity = check_parity(model, path, {k: v[: cfg.parity_samples] for k, v in feeds.items()}, cfg.parity_atol,
                          cfg.parity_rtol)
    return {"path": str(path), "opset": opset, "exporter": exporter, "size_mb": _io.file_size_mb(path),
            "parity": parity}


def check_parity(model: nn.Module, path: str | os.PathLike, inputs: np.ndarray | dict[str, np.ndarray], atol: float,
                 rtol: float) -> dict:
    """Run the same real inputs through PyTorch and ONNX Runtime, a batch at a time; raise StageError
    when they disagree."""
    from .verify import onnx_session

    feeds = _named(inputs)
    sess = onnx_session(path)
    n = len(next(iter(feeds.values())))
    max_abs, same, ok = 0.0, 0, True
    for start in range(0, n, _PARITY_BATCH):
        part = {k: np.ascontiguousarray(v[start:start + _PARITY_BATCH]) for k, v in feeds.items()}
        part = {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v for k, v in part.items()}
        with torch.no_grad():
            ref = model(*(torch.from_numpy(v) for v in part.values())).numpy()
        got = sess.run(None, part)[0]
        max_abs = max(max_abs, float(np.max(np.abs(ref - got))))
        same += int((ref.argmax(1) == got.argmax(1)).sum()) if ref.ndim == 2 else len(ref)
        ok = ok and bool(np.allclose(got, ref, atol=atol, rtol=rtol))
    result = {"samples": n, "max_abs_diff": max_abs, "top1_agreement": same / max(1, n), "atol": atol, "rtol": rtol, "ok": ok}
    if not ok:
        raise StageError(f"export: {Path(path).name} disagrees with PyTorch (max |diff| {max_abs:.3g} > atol {atol}); "
                         "the exported graph is wrong — check for unsupported ops or raise export.parity_atol.")
    return result
