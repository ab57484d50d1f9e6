"""Encode the transfer corpus with the teacher once and keep the embeddings in the cache folder."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .._io import atomic_write, write_json
from . import assets


def _cache_path(teacher: Path | str, sentences: Sequence[str], cache: Path | None) -> Path:
    """``<cache>/teacher_emb/<key>.npy``, the key hashing the teacher folder and every sentence."""
    h = hashlib.sha256()
    h.update(str(Path(teacher).resolve()).encode())
    for s in sentences:
        h.update(s.encode("utf-8") + b"\0")
    root = Path(cache) if cache is not None else assets.cache_dir()
    return root / "teacher_emb" / f"{h.hexdigest()[:16]}.npy"


def cache_info(teacher: Path | str, sentences: Sequence[str], cache: Path | None = None) -> dict | None:
    """What the cache recorded when it encoded ``sentences`` (teacher, n, resumed_from, seconds), or None."""
    path = _cache_path(teacher, sentences, cache).with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else None


def teacher_embeddings(teacher: Path | str, sentences: Sequence[str], cache: Path | None = None,
                       batch_size: int = 64, max_seq_length: int = 128) -> np.ndarray:
    """[N, D] float32 normalised teacher embeddings, read from ``<cache>/teacher_emb/<key>.npy`` when present."""
    path = _cache_path(teacher, sentences, cache)
    if path.is_file():
        return np.load(path)
    model = assets.load_sentence_transformer(teacher)
    model.max_seq_length = max_seq_length
    dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension  # renamed in v5
    out = np.zeros((len(sentences), dim()), dtype=np.float32)
    # an interrupted run resumes from its last finished chunk
    partial = path.with_suffix(".partial.npz")
    done = 0
    if partial.is_file():
        with np.load(partial) as z:
            done = int(z["done"])
            out[:done] = z["emb"][:done]
    resumed_from = done
    t0 = time.time()
    chunk = 512
    for i in range(done, len(sentences), chunk):
        batch = list(sentences[i:i + chunk])
        out[i:i + len(batch)] = model.encode(batch, batch_size=batch_size, normalize_embeddings=True,
                                             convert_to_numpy=True, show_progress_bar=False)
        done = i + len(batch)
        atomic_write(partial, lambda tmp: _save(tmp, np.savez, emb=out[:done], done=done))
        print(f"teacher: {done}/{len(sentences)} sentences, {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    atomic_write(path, lambda tmp: _save(tmp, np.save, out))
    write_json(path.with_suffix(".json"), {"teacher": str(teacher), "n": len(sentences), "resumed_from": resumed_from,
                                           "seconds": round(time.time() - t0, 1)})
    partial.unlink(missing_ok=True)
    return out


def _save(tmp: str, save, *args, **kwargs) -> None:
    """``np.save`` / ``np.savez`` into an open file: given a name, numpy would append its own suffix."""
    with open(tmp, "wb") as f:
        save(f, *args, **kwargs)
