"""The mobile bundle of a distilled sentence encoder: the INT8 model and the tokenizer it needs.

``bundle_text_variant`` reads one variant folder written by :func:`edgedistill.text.flow.distill_text_recipe`
(``int8.onnx``, ``tokenizer/``, ``meta.json``) and writes the same bundle the pipeline writes
(``model.onnx``, ``model.ort``, ``required_operators.config``, ``metadata.json``, ``MODEL_CARD.md``)
plus the tokenizer files, so an app can tokenise exactly as the model was trained.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError


def bundle_text_variant(variant_dir: str | Path, out_dir: str | Path, *, name: str, metric: dict,
                        teacher: str, size_mb: float | None = None, latency_ms: dict | None = None,
                        machine: dict | None = None, target: str = "any CPU") -> dict:
    """Write the bundle of ``variant_dir``'s INT8 encoder into ``out_dir``; return :func:`write_bundle`'s record.

    ``metric`` is ``{"name": ..., "value": ...}`` (e.g. STS-B test Spearman measured through ONNX Runtime).
    """
    from ..bundle import write_bundle
    from .flow import bundle_files

    vdir = Path(variant_dir)
    model, tok_dir, meta_path = vdir / "int8.onnx", vdir / "tokenizer", vdir / "meta.json"
    for p in (model, tok_dir, meta_path):
        if not p.exists():
            raise DataError(f"{p}: not found; bundle_text_variant needs a variant folder written by "
                            "`edgedistill text` (int8.onnx, tokenizer/, meta.json).")
    meta = json.loads(meta_path.read_text())
    tok_files = [str(tok_dir / f) for f in bundle_files(tok_dir)]
    if not tok_files:
        raise DataError(f"{tok_dir}: holds none of the tokenizer files; re-run `edgedistill text` for this variant.")
    metadata = {
        "name": name, "task": "sentence-embedding", "labels": [],
        "description": "sentence encoder: input_ids + attention_mask in, L2-normalised embedding out",
        "preprocessing": {"tokenizer": [Path(f).name for f in tok_files], "inputs": ["input_ids", "attention_mask"],
                          "pooling": "mean", "normalize": True},
        "metric": metric, "precision": "int8", "teacher": teacher, "target": target,
        "execution_provider": "CPUExecutionProvider",
    }
    card = {
        "name": name, "description": f"{meta.get('params', '?')}-parameter transformer student (teacher layers "
        f"{meta.get('layers')}), distilled from {teacher} with edgedistill, INT8 ({meta.get('int8', {}).get('mode')}).",
        "metric": metric, "size_mb": size_mb if size_mb is not None else meta.get("int8", {}).get("size_mb"),
        "latency_ms": latency_ms or {}, "peak_rss_mb": None, "threads": 1, "machine": machine or {},
        "teacher": teacher, "target": target, "dataset": "STS-B (evaluation); WordNet + STS-B train sentences (transfer)",
        "precision": "int8", "intended_use": "semantic similarity / retrieval embeddings on device",
        "limitations": "English only; vocabulary pruned to the transfer corpus and STS-B (other words split into "
                       "sub-words or [UNK]).",
    }
    return write_bundle(model, out_dir, metadata=metadata, model_card=card, extra_files=tok_files)
