"""Transformer-encoder sentence models: the teacher loader and the DistilBERT-style student.

``TextEncoder`` wraps a Hugging Face encoder with mean pooling and optional L2 normalisation:
``forward(input_ids, attention_mask) -> {"logits": embedding}`` during training (the embedding is
what the losses call ``"logits"``) and a bare ``[B, D]`` tensor when ``as_dict=False`` (export).

A student is built from a teacher of the same family by keeping a chosen subset of its layers
(DistilBERT-style initialisation) and pruning the vocabulary to the tokens a corpus needs: every
special token, every single character and its ``##`` continuation stay, so an unseen word still
tokenises through sub-words or ``[UNK]``.
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

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class TextEncoder(nn.Module):
    """Encoder + mean pooling (+ L2 normalisation)."""

    def __init__(self, encoder: nn.Module, normalize: bool = True, as_dict: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize
        self.as_dict = as_dict

    @property
    def dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.normalize:
            emb = nn.functional.normalize(emb, p=2.0, dim=1)
        return {"logits": emb} if self.as_dict else emb


def load_folder(folder: Path | str) -> tuple[TextEncoder, object]:
    """A sentence-transformers (or plain Hugging Face) folder -> (TextEncoder, tokenizer), offline.

    Mean pooling is the only pooling supported (all-mpnet-base-v2 and all-MiniLM-L6-v2 use it);
    normalisation follows the folder's modules.json (on when it lists a Normalize module).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder}: no config.json; pass a sentence-transformers or Hugging Face model folder.")
    pooling = folder / "1_Pooling" / "config.json"
    if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", True):
        raise ConfigError(f"{pooling}: only mean pooling is supported; use a mean-pooled sentence encoder.")
    modules = folder / "modules.json"
    normalize = modules.is_file() and "Normalize" in modules.read_text()
    model = AutoModel.from_pretrained(str(folder), attn_implementation="eager")
    return TextEncoder(model.eval(), normalize=normalize), AutoTokenizer.from_pretrained(str(folder))


def tiny_encoder(vocab: Sequence[str], hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> TextEncoder:
    """A randomly initialised BERT encoder over ``vocab`` (tests and from-scratch students)."""
    from transformers import BertConfig, BertModel
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=4 * hidden, max_position_embeddings=128, attn_implementation="eager")
    return TextEncoder(BertModel(cfg).eval(), normalize=True)


def pruned_vocab(tokenizer, texts: Iterable[str]) -> list[int]:
    """Sorted ids of the tokens to keep: those ``texts`` use, special tokens, single characters (+ ``##`` forms)."""
    vocab = tokenizer.get_vocab()
    keep = {i for i in tokenizer.all_special_ids}
    for tok, i in vocab.items():
        core = tok[2:] if tok.startswith("##") else tok
        if len(core) == 1 or (tok.startswith("[") and tok.endswith("]")):
            keep.add(i)
    texts = list(texts)
    for start in range(0, len(texts), 4096):
        for ids in tokenizer(texts[start:start + 4096], add_special_tokens=False)["input_ids"]:
            keep.update(ids)
    return sorted(keep)


def _write_vocab_tokenizer(tokenizer, keep: list[int], out_dir: Path):
    from transformers import BertTokenizer
    inv = {i: t for t, i in tokenizer.get_vocab().items()}
    vocab = {inv[i]: n for n, i in enumerate(keep)}
    tok = BertTokenizer(vocab=vocab, do_lower_case=bool(getattr(tokenizer, "do_lower_case", True)),
                        model_max_length=min(int(getattr(tokenizer, "model_max_length", 512)), 512))
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_dir))
    (out_dir / "vocab.txt").write_text("".join(inv[i] + "\n" for i in keep), encoding="utf-8")
    return tok


def make_student(teacher: TextEncoder, tokenizer, layers: Sequence[int], keep: list[int] | None,
                 out_dir: Path | str) -> tuple[TextEncoder, object]:
    """Copy ``teacher``, keep the encoder layers ``layers`` (e.g. ``[0, 2, 4]``) and the token rows ``keep``.

    Writes the pruned tokenizer (``TOKENIZER_FILES``) to ``out_dir`` and returns (student, tokenizer).
    The teacher must be BERT-like (``embeddings.word_embeddings`` and ``encoder.layer``).
    """
    enc = copy.deepcopy(teacher.encoder)
    n = len(enc.encoder.layer)
    if not layers or any(not 0 <= i < n for i in layers) or list(layers) != sorted(set(layers)):
        raise ConfigError(f"student.layers={list(layers)}: pick increasing layer indices in [0, {n - 1}] of the teacher.")
    enc.encoder.layer = nn.ModuleList([enc.encoder.layer[i] for i in layers])
    enc.pooler = None  # the [CLS] pooler is unused by mean pooling
    enc.config.num_hidden_layers = len(layers)
    keep = keep if keep is not None else list(range(enc.config.vocab_size))
    old = enc.embeddings.word_embeddings
    new = nn.Embedding(len(keep), old.embedding_dim, padding_idx=None)
    new.weight.data.copy_(old.weight.data[torch.as_tensor(keep)])
    enc.embeddings.word_embeddings = new
    enc.config.vocab_size = len(keep)
    enc.config.pad_token_id = keep.index(tokenizer.pad_token_id) if tokenizer.pad_token_id in keep else 0
    tok = _write_vocab_tokenizer(tokenizer, keep, Path(out_dir))
    return TextEncoder(enc, normalize=teacher.normalize), tok

