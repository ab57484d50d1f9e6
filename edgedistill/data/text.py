"""Text data: sentences (optionally labelled) and scored sentence pairs, read a batch at a time.

Datasets (registered like the others; the samples are strings, tokenised by each model itself):

- ``text-corpus``: the unlabelled transfer corpus (STS-B train sentences plus a share of WordNet
  glosses, ``options.max_sentences``, ``options.wordnet_share``) for sentence-embedding students;
  validation and test are STS-B's dev and test pairs.
- ``text-file``: the user's own sentences, one per line in a UTF-8 file (``data.path``), indexed by
  byte offsets so only the lines of a batch are read; evaluated on STS-B dev / test pairs.
- ``wordnet-lexnames``: WordNet noun glosses labelled by their lexicographer file (``noun.animal``,
  ``noun.artifact``, ... 26 classes), split by the recipe's fractions: a real labelled text
  classification set that installs offline (Debian ``wordnet-base``).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError
from .core import DATASETS, Preprocess, SampleSet, Splits, check_options, split_indices


class TextSamples(SampleSet):
    """Sentences with labels (-1 = unlabelled): a list in memory, or a text file read by line offsets."""

    input_shape = ()

    def __init__(self, texts: Sequence[str] | None = None, y: np.ndarray | None = None, source: str = "sentences",
                 file: Path | None = None, labelled: bool = False) -> None:
        self.texts, self.file, self.source, self.labelled = texts, file, source, labelled
        self.preprocess = Preprocess()
        self.offsets = _line_offsets(file) if file is not None else None
        n = len(self.offsets) - 1 if file is not None else len(texts)
        self.rows = np.arange(n)  # which sentences of the list / file this set holds
        self.y = np.full(n, -1, np.int64) if y is None else np.asarray(y, np.int64)

    def read(self, indices) -> list[str]:
        rows = [int(self.rows[i]) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
        if self.file is None:
            return [self.texts[r] for r in rows]
        out = []
        with open(self.file, "rb") as f:
            for r in rows:
                f.seek(self.offsets[r])
                raw = f.read(self.offsets[r + 1] - self.offsets[r])
                try:
                    line = raw.decode("utf-8").strip()
                    out.append(line.split("\t", 1)[1].strip() if self.labelled else line)  # "label<TAB>text"
                except UnicodeDecodeError:  # the file's line number: blank lines count there, not in r
                    f.seek(0)
                    line, left = 1, int(self.offsets[r])
                    while left > 0:
                        chunk = f.read(min(left, 1 << 20))
                        line, left = line + chunk.count(b"\n"), left - len(chunk)
                    raise DataError(f"{self.file} line {line}: is not UTF-8 text; re-save the file as UTF-8.") from None
        return out

    def lengths(self) -> np.ndarray:
        """Each sentence's length without reading it (bytes of its line in a file, characters in a list):
        the teacher cache reads texts shortest first, so a batch pads little."""
        if self.file is None:
            return np.asarray([len(self.texts[int(r)]) for r in self.rows], np.int64)
        return self.offsets[self.rows + 1] - self.offsets[self.rows]

    def subset(self, indices: np.ndarray) -> "TextSamples":
        idx = np.asarray(indices, dtype=np.int64)
        part = object.__new__(TextSamples)
        part.__dict__.update(self.__dict__)
        part.rows, part.y = self.rows[idx], self.y[idx]
        return part

    def where(self, i: int) -> str:
        r = int(self.rows[i])
        return f"{self.file} sentence {r + 1}" if self.file is not None else f"{self.source} sentence {r}"

    def _fingerprint(self) -> str:
        h = hashlib.sha256(self.rows.tobytes() + self.y.tobytes())
        if self.file is not None:
            st = self.file.stat()
            h.update(f"{self.file.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        else:
            for t in self.texts:
                h.update(t.encode("utf-8") + b"\0")
        return h.hexdigest()


class SentencePairs(SampleSet):
    """Sentence pairs with a similarity score (STS-B): the embedding task's evaluation set."""

    input_shape = ()

    def __init__(self, s1: list[str], s2: list[str], scores: np.ndarray, source: str) -> None:
        self.s1, self.s2, self.score, self.source = s1, s2, np.asarray(scores, np.float64), source
        self.y = np.full(len(s1), -1, np.int64)
        self.preprocess = Preprocess()

    def read(self, indices) -> list[str]:
        return [self.s1[int(i)] for i in np.asarray(indices).reshape(-1)]

    def where(self, i: int) -> str:
        return f"{self.source} pair {i}"

    def _fingerprint(self) -> str:
        return hashlib.sha256("\0".join(self.s1 + self.s2).encode() + self.score.tobytes()).hexdigest()

    def subset(self, indices: np.ndarray) -> "SentencePairs":
        idx = [int(i) for i in np.asarray(indices).reshape(-1)]
        return SentencePairs([self.s1[i] for i in idx], [self.s2[i] for i in idx], self.score[idx], self.source)


def _line_offsets(path: Path) -> np.ndarray:
    """Byte offset of every non-empty line's start, plus the end: 8 bytes a line, the text stays on disk
    (a line runs to the next kept line's start; the blank lines between are stripped on read)."""
    starts, pos = [], 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                starts.append(pos)
                ends = pos + len(line)
            pos += len(line)
    if not starts:
        raise DataError(f"{path}: holds no sentences; put one sentence per line.")
    return np.asarray(starts + [ends], dtype=np.int64)


def _stsb_eval() -> tuple[SentencePairs, SentencePairs]:
    from ..text import stsb

    dev, test = stsb.load("dev"), stsb.load("test")
    return (SentencePairs(dev.s1, dev.s2, dev.score, "STS-B dev"),
            SentencePairs(test.s1, test.s2, test.score, "STS-B test"))


def embedding_splits(train: TextSamples, name: str) -> Splits:
    val, test = _stsb_eval()
    return Splits(train=train, val=val, test=test, num_classes=0, input_shape=(), labels=[],
                  normalization={"input": "text"}, name=name)


@DATASETS.register("text-corpus", help="STS-B train sentences + WordNet glosses (unlabelled transfer text); eval: STS-B")
def text_corpus(cfg, seed: int) -> Splits:
    from ..text import corpus

    opts = check_options(cfg, "text-corpus", {"max_sentences", "wordnet_share", "seed"})
    sentences = corpus.transfer_corpus(int(opts.get("max_sentences", 4000)), float(opts.get("wordnet_share", 0.25)),
                                       int(opts.get("seed", seed)))
    return embedding_splits(TextSamples(sentences, source="transfer corpus"), "text-corpus")


@DATASETS.register("text-file", help="your own sentences, one per line in a UTF-8 file (data.path): unlabelled (eval: "
                                    "STS-B), or 'label<TAB>text' lines with options.labelled = true")
def text_file(cfg, seed: int) -> Splits:
    labelled = bool(check_options(cfg, "text-file", {"labelled"}).get("labelled", False))
    if not cfg.path:
        raise DataError("data.path: dataset 'text-file' needs a UTF-8 text file with one sentence per line; set data.path.")
    path = Path(cfg.path)
    if not path.is_file():
        raise DataError(f"data.path: {path} is not a file; pass a UTF-8 text file with one sentence per line.")
    if not labelled:
        return embedding_splits(TextSamples(file=path, source=str(path)), "text-file")
    names, y = _file_labels(path)
    base = TextSamples(file=path, source=str(path), labelled=True)
    base.y = y
    tr, va, te = split_indices(y, cfg, seed)
    return Splits(train=base.subset(tr), val=base.subset(va), test=base.subset(te), num_classes=len(names),
                  input_shape=(), labels=names, normalization={"input": "text"}, name="text-file")


def _file_labels(path: Path) -> tuple[list[str], np.ndarray]:
    """The label of every non-empty 'label<TAB>text' line (one pass; only the labels are kept) and their sorted names."""
    labels: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if "\t" not in line:
                raise DataError(f"{path}:{lineno}: no tab; with options.labelled = true every line is 'label<TAB>text'.")
            labels.append(line.split("\t", 1)[0].strip())
    names = sorted(set(labels))
    index = {n: i for i, n in enumerate(names)}
    return names, np.asarray([index[n] for n in labels], np.int64)


# WordNet's lexicographer files 03..28 (the noun ones), in the order of their numbers.
NOUN_LEXNAMES = ["noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute", "noun.body",
                 "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
                 "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
                 "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
                 "noun.substance", "noun.time"]


def wordnet_glosses(folder: Path, per_class: int | None, seed: int) -> tuple[list[str], np.ndarray]:
    """Noun definitions (the gloss before its first ';' and examples) and their lexicographer file number - 3."""
    path = Path(folder) / "data.noun"
    if not path.is_file():
        raise DataError(f"{path}: WordNet data file missing; run `apt-get install wordnet-base` or set data.path "
                        "to a folder holding data.noun.")
    texts, labels = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("  ") or "|" not in line:  # licence header
                continue
            fields = line.split(" ", 3)
            try:
                lex = int(fields[1]) - 3
            except (IndexError, ValueError):
                raise DataError(f"{path}:{lineno}: not a WordNet synset line; reinstall wordnet-base.") from None
            gloss = line.split("|", 1)[1].split(";")[0].strip().strip('"').strip()
            if 0 <= lex < len(NOUN_LEXNAMES) and len(gloss.split()) >= 3:
                texts.append(gloss)
                labels.append(lex)
    y = np.asarray(labels, np.int64)
    if per_class:  # a seeded, class-balanced cap (the largest classes hold thousands of glosses)
        rng = random.Random(seed)
        keep = []
        for c in range(len(NOUN_LEXNAMES)):
            members = list(np.flatnonzero(y == c))
            rng.shuffle(members)
            keep += members[:per_class]
        keep.sort()
        texts, y = [texts[i] for i in keep], y[keep]
    return texts, y


@DATASETS.register("wordnet-lexnames", help="WordNet noun glosses labelled by lexicographer file (26 classes; wordnet-base)")
def wordnet_lexnames(cfg, seed: int) -> Splits:
    opts = check_options(cfg, "wordnet-lexnames", {"per_class"})
    folder = Path(cfg.path) if cfg.path else Path("/usr/share/wordnet")
    texts, y = wordnet_glosses(folder, opts.get("per_class"), seed)
    base = TextSamples(texts, y, source=str(folder / "data.noun"))
    tr, va, te = split_indices(y, cfg, seed)
    return Splits(train=base.subset(tr), val=base.subset(va), test=base.subset(te), num_classes=len(NOUN_LEXNAMES),
                  input_shape=(), labels=list(NOUN_LEXNAMES), normalization={"input": "text"}, name="wordnet-lexnames")


