"""Export stage: ONNX with dynamic batch (and sequence) axes, the ONNX checker, and a parity check of
ONNX Runtime against PyTorch on real inputs that fails the stage on disagreement; and, for a target whose runtime
is LiteRT, :func:`export_tflite` (``.tflite`` by ``litert_torch``, FP32 checked the same way, INT8 by PT2E).

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
import time
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
from torch import nn

from . import _io
from .errors import EdgeDistillError, StageError
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
                 rtol: float, gate: bool = True) -> dict:
    """Run the same real inputs through PyTorch and the file's runtime (ONNX Runtime or LiteRT), a batch at a time;
    raise StageError when they disagree (``gate=False``: only report it, for a quantized file)."""
    from .verify import model_session

    feeds = _named(inputs)
    sess = model_session(path)
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
    if gate and not ok:
        raise StageError(f"export: {Path(path).name} disagrees with PyTorch (max |diff| {max_abs:.3g} > atol {atol}); "
                         "the exported graph is wrong — check for unsupported ops or raise export.parity_atol.")
    return result


def export_tflite(model: nn.Module, path: str | os.PathLike, inputs: np.ndarray, *, calibration=None,
                  parity: tuple[float, float] | None = None, ranges=None) -> dict:
    """Convert ``model`` to ``path`` with ``litert_torch`` for batch 1 (``inputs[:1]`` traces it). With
    ``calibration`` (a SampleSet or array), INT8 by PT2E: symmetric per-channel INT8 weights and per-tensor int8
    activations observed on those samples, int8 input and output. ``parity`` ``(atol, rtol)`` checks the FP32 file
    against PyTorch on ``inputs`` (:func:`check_parity`; fails the stage); an INT8 file records the same comparison
    with PyTorch's FP32 model without failing (``agreement``). ``ranges`` (:func:`edgedistill.quant.qat.activation_ranges`
    on the first calibration sample): each activation observer whose input is one of those tensors takes its learned
    range instead of the observed one (a QAT student's ranges carried over); the others keep what they observed.
    Nothing is left at ``path`` when the conversion fails."""
    from .data.core import as_samples
    from .litert import quiet_fds

    path = Path(path)
    model = model.eval().cpu()
    sample = (torch.from_numpy(np.ascontiguousarray(inputs[:1], dtype=np.float32)),)
    tmp = path.with_name(f".{path.name}.tmp")
    t0 = time.perf_counter()
    try:
        with quiet_fds(), torch.no_grad():
            litert_torch = _litert_torch()
            if calibration is None:
                edge = litert_torch.convert(model, sample)
            else:
                from litert_torch.quantize import pt2e_quantizer
                from litert_torch.quantize.quant_config import QuantConfig
                from torchao.quantization.pt2e import quantize_pt2e

                quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
                    pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
                prepared = quantize_pt2e.prepare_pt2e(torch.export.export(model, sample).module(), quantizer)
                calib = as_samples(calibration)
                for i in range(len(calib)):  # batch 1, as the converted model runs
                    prepared(torch.from_numpy(calib.read(np.array([i]))))
                first = (torch.from_numpy(calib.read(np.array([0]))),)  # a calibration sample: no test data observed
                carried = _carry_ranges(prepared, first, ranges) if ranges else None
                edge = litert_torch.convert(quantize_pt2e.convert_pt2e(prepared, fold_quantize=False), sample,
                                            quant_config=QuantConfig(pt2e_quantizer=quantizer))
            edge.export(str(tmp))
        os.replace(tmp, path)
    except EdgeDistillError:
        raise
    except Exception as e:
        tmp.unlink(missing_ok=True)
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise StageError(f"litert: converting the model to {path.name} failed ({detail}); LiteRT's converter supports "
                         "fewer operators than ONNX: set the target's runtime = \"onnxruntime\" for this model.") from None
    seconds = time.perf_counter() - t0
    out = {"path": str(path), "size_mb": path.stat().st_size / 1e6, "seconds": round(seconds, 3),
           "precision": "fp32" if calibration is None else "int8", "batch": 1}
    if calibration is not None:
        out["calibration_samples"] = len(as_samples(calibration))
    if ranges:
        out["activation_ranges_carried"] = carried
    if calibration is None and parity is not None:
        out["parity"] = check_parity(model, path, inputs, *parity)
    else:
        out["agreement"] = check_parity(model, path, inputs, *(parity or (1e-4, 1e-3)), gate=False)
    return out


def _carry_ranges(prepared, sample: tuple, ranges: list) -> dict:
    """Replace each per-tensor activation observer of a PT2E-prepared module whose input on ``sample`` equals one of
    ``ranges``' tensors by a MinMax observer holding that tensor's learned range; say how many were replaced."""
    from torchao.quantization.pt2e.observer import MinMaxObserver

    seen: dict = {}
    observers = {n: m for n, m in prepared.named_modules() if n.startswith("activation_post_process")
                 and getattr(m, "qscheme", None) == torch.per_tensor_affine}

    def keep(name: str):
        def hook(module, args) -> None:  # returns None: the input goes on unchanged
            seen.setdefault(name, args[0].detach().clone())
        return hook

    hooks = [m.register_forward_pre_hook(keep(n)) for n, m in observers.items()]
    try:
        prepared(*sample)
    finally:
        for h in hooks:
            h.remove()
    carried = []
    for name, obs in observers.items():
        x = seen.get(name)
        match = next(((lo, hi) for t, lo, hi in ranges if x is not None and t.shape == x.shape
                      and torch.allclose(t, x, atol=1e-5, rtol=1e-4)), None)
        if match is None:
            continue
        fixed = MinMaxObserver(dtype=obs.dtype, qscheme=obs.qscheme, quant_min=obs.quant_min, quant_max=obs.quant_max,
                               eps=getattr(obs, "eps", torch.finfo(torch.float32).eps))
        fixed.min_val.fill_(match[0])
        fixed.max_val.fill_(match[1])
        setattr(prepared, name, fixed)
        carried.append(name)
    return {"observers": len(observers), "from_qat": len(carried)}


def _litert_torch():
    from .litert import INSTALL

    try:
        import litert_torch
    except ImportError:
        raise EdgeDistillError(f"the target's runtime asks for LiteRT, whose converter is not installed; {INSTALL}, "
                               "or set runtime = \"onnxruntime\" in the target.") from None
    return litert_torch
