"""ONNX export of a sentence encoder (encoder + mean pooling + normalisation), graph fusion, INT8.

In: ``input_ids`` and ``attention_mask`` (int64, [batch, sequence], both axes dynamic); out:
``embedding`` ([batch, dim], float32). Fusion uses ``onnxruntime.transformers.optimizer`` (the
maintained successor of onnxruntime-tools); INT8 is either dynamic quantization of MatMul/Gemm
(weights INT8, activations quantized at run time) or static QDQ calibrated on real sentences.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch

from .. import _io
from ..errors import ConfigError, StageError
from .student import TextEncoder

INPUTS = ("input_ids", "attention_mask")
QUANT_MODES = ("dynamic", "static")


def export_text_onnx(model: TextEncoder, tokenizer, path: str | os.PathLike, sample: Sequence[str],
                     opset: int = 17, atol: float = 1e-4) -> dict:
    """Export ``model`` to ``path``, run the ONNX checker, and check ORT against PyTorch on ``sample`` sentences."""
    path = Path(path)
    model = model.eval().cpu()
    model.as_dict = False
    enc = tokenizer(list(sample[:4]), padding=True, truncation=True, max_length=64, return_tensors="pt")
    args = (enc["input_ids"], enc["attention_mask"])
    tmp = path.with_name(f".{path.name}.tmp.onnx")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, str(tmp), dynamo=False, opset_version=opset, input_names=list(INPUTS),
                              output_names=["embedding"], do_constant_folding=True,
                              dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                            "attention_mask": {0: "batch", 1: "sequence"}, "embedding": {0: "batch"}})
        os.replace(tmp, path)
    except Exception as e:
        if tmp.exists():
            tmp.unlink()
        raise StageError(f"export: torch.onnx.export failed for {path.name} ({str(e).strip().splitlines()[0][:200]}).") from None
    finally:
        model.as_dict = True
    onnx.checker.check_model(str(path))
    parity = check_parity(model, tokenizer, path, sample, atol)
    return {"path": str(path), "size_mb": _io.file_size_mb(path), "parity_max_abs": parity}


def _session(path: str | os.PathLike, threads: int = 1):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def onnx_encoder(path: str | os.PathLike, tokenizer, threads: int = 1, batch_size: int = 64, max_seq_length: int = 128):
    """A function ``sentences -> [N, D] embeddings`` running the exported file in ONNX Runtime."""
    sess = _session(path, threads)
    names = {i.name for i in sess.get_inputs()}

    def encode(sentences: Sequence[str]) -> np.ndarray:
        out = []
        order = np.argsort([len(s) for s in sentences], kind="stable")  # similar lengths batch together
        for i in range(0, len(order), batch_size):
            chunk = [sentences[j] for j in order[i:i + batch_size]]
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_seq_length, return_tensors="np")
            feed = {k: enc[k].astype(np.int64) for k in INPUTS if k in names}
            out.append(sess.run(None, feed)[0])
        emb = np.concatenate(out)
        res = np.empty_like(emb)
        res[order] = emb
        return res

    return encode


def check_parity(model: TextEncoder, tokenizer, path: str | os.PathLike, sample: Sequence[str], atol: float) -> float:
    from .train import encode as torch_encode
    ref = torch_encode(model, tokenizer, list(sample[:16]))
    got = onnx_encoder(path, tokenizer)(list(sample[:16]))
    got = got / np.maximum(np.linalg.norm(got, axis=1, keepdims=True), 1e-12)
    err = float(np.max(np.abs(ref - got)))
    if err > atol:
        raise StageError(f"export: {Path(path).name} differs from PyTorch by {err:.2e} (> {atol:.0e}); check the exported graph.")
    return err


def fuse(src: str | os.PathLike, dst: str | os.PathLike, num_heads: int, hidden_size: int, model_type: str = "bert",
         embed_layer_norm: bool = False) -> dict:
    """Fuse attention / SkipLayerNorm / GELU with ``onnxruntime.transformers.optimizer``; returns the fused-op counts.

    ``embed_layer_norm`` stays off by default: the fused EmbedLayerNormalization keeps the word
    embeddings in FP32, while an unfused Gather lets INT8 quantization shrink them 4x.
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions
    options = FusionOptions(model_type)
    options.enable_embed_layer_norm = embed_layer_norm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optimizer.optimize_model(str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                                       optimization_options=options, opt_level=1, use_gpu=False, only_onnxruntime=False)
    opt.save_model_to_file(str(dst))
    return {k: v for k, v in opt.get_fused_operator_statistics().items() if v}


class _Calib:
    """CalibrationDataReader over tokenised sentences (one sentence per call, like the deployment)."""

    def __init__(self, tokenizer, sentences: Sequence[str], names: set[str], max_seq_length: int = 64) -> None:
        self._items = []
        for s in sentences:
            enc = tokenizer([s], truncation=True, max_length=max_seq_length, return_tensors="np")
            self._items.append({k: enc[k].astype(np.int64) for k in INPUTS if k in names})
        self._it = iter(self._items)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._items)


def quantize_text(src: str | os.PathLike, dst: str | os.PathLike, mode: str = "dynamic", tokenizer=None,
                  calib_sentences: Sequence[str] = (), embeddings: bool = True) -> dict:
    """INT8: ``dynamic`` (MatMul/Gemm weights INT8, per-channel) or ``static`` (QDQ, S8S8, MinMax calibration).

    ``embeddings`` also stores the embedding tables (Gather) in INT8, dequantized on lookup.
    """
    from onnxruntime import quantization as q
    if mode not in QUANT_MODES:
        raise ConfigError(f"export.quant_mode={mode!r} is unknown; use one of {', '.join(QUANT_MODES)}.")
    ops = ["MatMul", "Gemm"] + (["Attention"] if mode == "dynamic" else []) + (["Gather"] if embeddings else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "dynamic":
            q.quantize_dynamic(str(src), str(dst), op_types_to_quantize=ops, per_channel=True,
                               weight_type=q.QuantType.QInt8,
                               extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        else:
            if tokenizer is None or not calib_sentences:
                raise ConfigError("export.quant_mode='static' needs a tokenizer and calibration sentences; pass calib_sentences.")
            names = {i.name for i in onnx.load(str(src), load_external_data=False).graph.input}
            q.quantize_static(str(src), str(dst), _Calib(tokenizer, calib_sentences, names), quant_format=q.QuantFormat.QDQ,
                              op_types_to_quantize=ops, per_channel=True,
                              activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                              calibrate_method=q.CalibrationMethod.MinMax,
                              extra_options={"ActivationSymmetric": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"path": str(dst), "mode": mode, "size_mb": _io.file_size_mb(dst)}
