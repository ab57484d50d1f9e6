"""Encode the transfer corpus with the teacher once and keep the embeddings in the cache folder."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .._io import atomic_write
from . import assets


def _key(teacher: Path, sentences: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(str(Path(teacher).resolve()).encode())
    for s in sentences:
        h.update(s.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def cache_info(teacher: Path | str, sentences: Sequence[str], cache: Path | None = None) -> dict | None:
    """What the cache recorded when it encoded ``sentences`` (teacher, n, resumed_from, seconds), or None."""
    root = Path(cache) if cache is not None else assets.cache_dir()
    path = root / "teacher_emb" / f"{_key(Path(teacher), sentences)}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def teacher_embeddings(teacher: Path | str, sentences: Sequence[str], cache: Path | None = None,
                       batch_size: int = 64, max_seq_length: int = 128) -> np.ndarray:
    """[N, D] float32 normalised teacher embeddings, read from ``<cache>/teacher_emb/<key>.npy`` when present."""
    root = Path(cache) if cache is not None else assets.cache_dir()
    path = root / "teacher_emb" / f"{_key(Path(teacher), sentences)}.npy"
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
        atomic_write(partial, lambda tmp: np.savez(open(tmp, "wb"), emb=out[:done], done=done))
        print(f"teacher: {done}/{len(sentences)} sentences, {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: np.save(open(tmp, "wb"), out))
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(
        {"teacher": str(teacher), "n": len(sentences), "resumed_from": resumed_from,
         "seconds": round(time.time() - t0, 1)})))
    partial.unlink(missing_ok=True)
    return out
