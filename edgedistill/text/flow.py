"""The text-embedding flow as one verb: ``distill_text_recipe(recipe, out_dir)``.

corpus -> teacher embeddings (cached) -> student from the init model's layers + pruned vocab ->
distil one student per variant (e.g. relation-based ``simmat`` vs embedding-only ``embed_cos``)
-> ONNX export (+parity) -> fusion -> INT8. The main recipe schema is image-classification shaped,
so text runs use this recipe (``examples/text_embedding.toml``); every key is checked.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field as dc_field
from pathlib import Path

import torch

from .. import _io
from .._schema import field, from_dict, load_toml
from ..errors import ConfigError
from . import assets, corpus, stsb
from . import export as ex
from ._teacher_cache import cache_info, teacher_embeddings
from ..models import count_params
from .student import TOKENIZER_FILES, load_folder, make_student, pruned_vocab
from .train import LossTerm, TextDistillConfig, distill_text

_NAMED = {"all-mpnet-base-v2": assets.mpnet_path, "all-MiniLM-L6-v2": assets.minilm_path}


@dataclass
class CorpusConfig:
    max_sentences: int = field(4000, ge=64)
    wordnet_share: float = field(0.25, ge=0.0, le=1.0)
    seed: int = 0


@dataclass
class TeacherConfig:
    name: str = "all-mpnet-base-v2"  # a named model or a sentence-transformers folder
    max_seq_length: int = field(48, ge=8, le=512)


@dataclass
class StudentConfig:
    init: str = "all-MiniLM-L6-v2"  # the BERT-like model whose layers initialise the student
    layers: list[int] = dc_field(default_factory=lambda: [0, 2, 4])
    prune_vocab: bool = True


@dataclass
class Variant:
    name: str = "relation"
    losses: list[LossTerm] = dc_field(default_factory=lambda: [LossTerm("simmat", 1.0)])


@dataclass
class TextExportConfig:
    fuse: bool = True
    quant_mode: str = "dynamic"
    calib_sentences: int = field(100, ge=1)

    def _check(self, where: str) -> None:
        if self.quant_mode not in ex.QUANT_MODES:
            raise ConfigError(f"{where}.quant_mode={self.quant_mode!r} is unknown; use one of {', '.join(ex.QUANT_MODES)}.")


@dataclass
class TextRecipe:
    name: str = "text_embedding"
    corpus: CorpusConfig = dc_field(default_factory=CorpusConfig)
    teacher: TeacherConfig = dc_field(default_factory=TeacherConfig)
    student: StudentConfig = dc_field(default_factory=StudentConfig)
    distill: TextDistillConfig = dc_field(default_factory=TextDistillConfig)
    variants: list[Variant] = dc_field(default_factory=lambda: [Variant()])
    export: TextExportConfig = dc_field(default_factory=TextExportConfig)


def load_text_recipe(path: str | Path) -> TextRecipe:
    return from_dict(TextRecipe, load_toml(str(path), "text recipe"), "")


def resolve_model(name: str) -> Path:
    """A named model (``all-mpnet-base-v2``, ``all-MiniLM-L6-v2``) or a folder path -> its folder."""
    if name in _NAMED:
        return _NAMED[name]()
    if Path(name).is_dir():
        return Path(name)
    raise ConfigError(f"model {name!r} is neither one of {', '.join(_NAMED)} nor a folder; fix teacher.name / student.init.")


def distill_text_recipe(recipe: TextRecipe, out_dir: str | Path, threads: int = 1, log=sys.stderr) -> dict:
    """Run the flow; writes ``<out_dir>/<variant>/{model.pt, tokenizer/, fp32.onnx, int8.onnx, meta.json}``."""
    torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sentences = corpus.transfer_corpus(recipe.corpus.max_sentences, recipe.corpus.wordnet_share, recipe.corpus.seed)
    teacher_dir = resolve_model(recipe.teacher.name)
    temb = teacher_embeddings(teacher_dir, sentences, max_seq_length=recipe.teacher.max_seq_length)
    teacher_seconds = round(time.time() - t0, 1)
    base, tok = load_folder(resolve_model(recipe.student.init))
    dev, test = stsb.load("dev"), stsb.load("test")
    keep = None
    if recipe.student.prune_vocab:  # the tokens the transfer corpus and the evaluation need
        keep = pruned_vocab(tok, sentences + dev.s1 + dev.s2 + test.s1 + test.s2)
    summary = {"teacher": str(teacher_dir), "corpus_sentences": len(sentences), "teacher_seconds": teacher_seconds,
               "teacher_cache": cache_info(teacher_dir, sentences),
               "vocab": len(keep) if keep else None, "variants": {}}
    for v in recipe.variants:
        vdir = out / v.name
        student, stok = make_student(base, tok, recipe.student.layers, keep, vdir / "tokenizer")
        print(f"[{v.name}] distilling {count_params(student)} params on {len(sentences)} sentences", file=log, flush=True)
        best, hist = distill_text(student, stok, sentences, temb, recipe.distill, v.losses, dev=dev, log=log)
        torch.save(best.state_dict(), vdir / "model.pt")
        summary["variants"][v.name] = _export(best, stok, vdir, recipe, hist, sentences)
    _io.write_json(out / "summary.json", summary)
    return summary


def _export(model, tok, vdir: Path, recipe: TextRecipe, hist: dict, sentences: list[str]) -> dict:
    fp32 = vdir / "fp32.onnx"
    info = ex.export_text_onnx(model, tok, fp32, sentences[:16])
    src = fp32
    if recipe.export.fuse:
        cfg = model.encoder.config
        info["fused_ops"] = ex.fuse(fp32, vdir / "fp32_fused.onnx", cfg.num_attention_heads, cfg.hidden_size)
        src = vdir / "fp32_fused.onnx"
    q = ex.quantize_text(src, vdir / "int8.onnx", recipe.export.quant_mode, tok, sentences[: recipe.export.calib_sentences])
    meta = {"params": count_params(model), "layers": recipe.student.layers, "export": info, "int8": q,
            "train_seconds": hist["seconds"], "best_dev_spearman_torch": hist["best_dev_spearman"],
            "dev_curve": hist["dev_spearman"], "tokenizer_files": [f"tokenizer/{f}" for f in bundle_files(vdir / "tokenizer")]}
    _io.write_json(vdir / "meta.json", meta)
    return meta


def bundle_files(tokenizer_dir: Path) -> list[str]:
    """The tokenizer files that must travel with the model (those present of ``TOKENIZER_FILES``)."""
    return [f for f in TOKENIZER_FILES if (Path(tokenizer_dir) / f).is_file()]
