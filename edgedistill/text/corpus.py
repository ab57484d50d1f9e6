"""The unlabelled transfer corpus: WordNet glosses and examples plus STS-B train sentences.

WordNet comes from Debian ``wordnet-base`` (``/usr/share/wordnet/data.{noun,verb,adj,adv}``): the
text after ``|`` on each synset line, split on ``;``, with quotes stripped. The teacher labels this
text for free; no gold labels are used.
"""

from __future__ import annotations

import random
from pathlib import Path

from ..errors import ConfigError
from . import stsb

WORDNET_DIR = Path("/usr/share/wordnet")
_POS = ("noun", "verb", "adj", "adv")


def wordnet_sentences(folder: Path | str = WORDNET_DIR, min_words: int = 3) -> list[str]:
    """Glosses and example sentences, deduplicated, in file order."""
    folder = Path(folder)
    out: list[str] = []
    seen: set[str] = set()
    for pos in _POS:
        path = folder / f"data.{pos}"
        if not path.is_file():
            raise ConfigError(f"{path}: WordNet data file missing; run `apt-get install wordnet-base` or set corpus.wordnet_dir.")
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:  # licence header / no gloss
                    continue
                for piece in line.split("|", 1)[1].split(";"):
                    text = piece.strip().strip('"').strip()
                    if len(text.split()) >= min_words and text not in seen:
                        seen.add(text)
                        out.append(text)
    return out


def transfer_corpus(max_sentences: int, wordnet_share: float = 0.3, seed: int = 0,
                    wordnet_dir: Path | str = WORDNET_DIR) -> list[str]:
    """A seeded sample of ``max_sentences``: STS-B train sentences plus ``wordnet_share`` of WordNet text."""
    if max_sentences < 1 or not 0.0 <= wordnet_share <= 1.0:
        raise ConfigError(f"corpus: max_sentences={max_sentences} must be >= 1 and wordnet_share={wordnet_share} in [0, 1].")
    train = stsb.load("train")
    sts = list(dict.fromkeys(train.s1 + train.s2))
    wn = wordnet_sentences(wordnet_dir) if wordnet_share > 0 else []
    rng = random.Random(seed)
    rng.shuffle(sts)
    rng.shuffle(wn)
    n_wn = min(len(wn), round(max_sentences * wordnet_share))
    sentences = wn[:n_wn] + sts[: max_sentences - n_wn]
    rng.shuffle(sentences)
    return sentences
