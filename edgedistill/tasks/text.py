"""Transformer text tasks: ``embedding`` (sentence encoders; STS-B Spearman) and ``text-classification``
(a transformer teacher's logits and hidden states; accuracy).

Both read texts (``edgedistill.data.text``) that each model tokenises itself, export with the
TorchScript exporter (ONNX Runtime fuses its attention), quantize dynamically after ONNX Runtime's
BERT fusion, and bundle the student's tokenizer. The teacher's and the student's tokenizers are
kept in their stage folders (``01_teacher/tokenizer``, ``02_student/tokenizer``); the ONNX metric
tokenises with the one of the model it measures.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from .. import _io
from ..data.core import SampleSet, Splits
from ..errors import ConfigError
from .core import TASKS, Task

if TYPE_CHECKING:
    from torch import nn

#: tokens per sentence when exported files are measured (STS-B sentences are shorter)
EVAL_MAX_TOKENS = 128
_TEXT_ARCHS = ("sentence-transformer", "transformer-layers")


class _TextTask(Task):
    exporter = "torchscript"
    ptq_mode = "dynamic"
    supports_litert = False  # token inputs in variable-length batches; LiteRT's converted graphs have static shapes
    opset = 17
    supports_qat = False
    _keep: Optional[list[int]] = None  # the token ids student.prune_vocab keeps, found once (_kept_tokens)

    def fusion_args(self, model: Optional[nn.Module] = None) -> dict:
        # ORT cannot detect the head count of these graphs itself: without it no Attention is fused
        if model is not None:
            config = model.encoder.config
            return {"model_type": "bert", "num_heads": config.num_attention_heads, "hidden_size": config.hidden_size}
        meta = _io.read_json(self._stage_dir("student") / "meta.json")
        return {"model_type": "bert", "num_heads": meta["num_heads"], "hidden_size": meta["hidden_size"]}

    def preflight(self, recipe, splits: Splits) -> None:
        """Names and parameters of both models and the losses, without loading any weights."""
        import inspect

        from ..distill.stage import build_terms
        from ..models.core import check_params
        from ..models.text import check_source

        if splits.input_shape != ():
            raise ConfigError(f"data.dataset: {recipe.data.dataset!r} holds arrays of shape {splits.input_shape}; the "
                              f"{self.name} task reads texts (text-file, text-corpus, wordnet-lexnames).")
        if self.name == "text-classification" and splits.num_classes < 2:
            raise ConfigError(f"data.dataset: {recipe.data.dataset!r} has no labels; the text-classification task needs "
                              "labelled texts (text-file with options.labelled = true, wordnet-lexnames).")
        if recipe.student.arch == "teacher":
            raise ConfigError(f"student.arch: 'teacher' (compressing the teacher itself) serves the classification task; "
                              f"name a {_TEXT_ARCHS[-1]} student for the {self.name} task.")
        for role, cfg in (("teacher", recipe.teacher), ("student", recipe.student)):
            factory = check_params(cfg.arch, cfg.params, role)
            if cfg.arch not in _TEXT_ARCHS:
                raise ConfigError(f"{role}.arch: {cfg.arch!r} cannot read text; the {self.name} task needs one of: "
                                  f"{', '.join(_TEXT_ARCHS)}.")
            param = "name" if cfg.arch == "sentence-transformer" else "init"  # the model folder it loads
            check_source(str(cfg.params.get(param, inspect.signature(factory).parameters[param].default)),
                         f"{role}.params.{param}")
            if cfg.arch == "transformer-layers":  # the layer choice against the init model's config.json
                from ..models.text import check_layers, layer_count

                init = str(cfg.params.get("init", inspect.signature(factory).parameters["init"].default))
                n = layer_count(init)
                if n is not None:
                    check_layers(cfg.params.get("layers", inspect.signature(factory).parameters["layers"].default), n,
                                 init, f"{role}.params.layers")
        if recipe.qat.enabled:
            raise ConfigError(f"qat.enabled: the {self.name} task's transformer students are quantized by PTQ "
                              "(dynamic INT8), not trained with fake quantization; set qat.enabled = false.")
        if recipe.distill.augment:
            raise ConfigError("distill.augment: image augmentation does not apply to texts; set it false.")
        if recipe.teacher.checkpoint is None and (recipe.teacher.epochs or 0) > 0 and self.name == "embedding":
            raise ConfigError("teacher.epochs: a pretrained sentence-embedding teacher is used as it is; set "
                              "teacher.epochs = 0.")
        build_terms(recipe, splits.num_classes)

    # --- models ---------------------------------------------------------------------------------

    def prepare_teacher(self, recipe, splits: Splits, out_dir: Path, trust_checkpoint: bool, log) -> nn.Module:
        from ..distill.losses import LossContext, build_loss
        from ..distill.train import FitConfig, Term, fit
        from ..models import build_model, count_params, save_checkpoint
        from ..models.core import mark_trained
        from ..models.text import save_tokenizer
        from ..teacher import teacher_weights
        import torch

        cfg = recipe.teacher
        torch.manual_seed(recipe.seed)
        model = build_model(cfg.arch, cfg.params, (), splits.num_classes, "teacher")
        if self.name == "embedding":  # the pretrained encoder is the whole model
            mark_trained(model, f"pretrained {cfg.arch} {cfg.params}")
        weights, epochs = teacher_weights(cfg, model, trust_checkpoint, log)
        history = []
        if epochs:
            if cfg.train == "head":  # a linear probe: the pretrained encoder stays as it is
                for p in model.encoder.parameters():
                    p.requires_grad_(False)
            ce = build_loss("ce", {}, LossContext(num_classes=splits.num_classes), "teacher")
            fit_cfg = FitConfig.from_section(cfg, desc="teacher", batch_size=recipe.data.batch_size,
                                             seed=recipe.seed, workers=recipe.data.workers, epochs=epochs,
                                             device=recipe.distill.device)
            history = fit(model, splits.train, fit_cfg, [Term("ce", ce)], out_dir, val=splits.val,
                          evaluate=self.val_metric).history
            for p in model.parameters():
                p.requires_grad_(True)
        source = weights or f"pretrained {cfg.params}"
        if epochs:
            source += f", {'head' if cfg.train == 'head' else 'all layers'} trained {epochs} epochs"
        model.eval()
        name, value = self.val_metric(model, splits.test)
        save_checkpoint(out_dir / "model.pt", model, arch=cfg.arch)
        save_tokenizer(model, out_dir / "tokenizer")
        _io.write_json(out_dir / "meta.json", {"arch": cfg.arch, "params": cfg.params, "source": source,
                                               "parameters": count_params(model), f"test_{name}_torch": value,
                                               "epochs": len(history)})
        return model

    def load_teacher(self, recipe, splits: Splits, teacher_dir: Path) -> nn.Module:
        from ..models import build_model, load_checkpoint

        model = build_model(recipe.teacher.arch, recipe.teacher.params, (), splits.num_classes, "teacher")
        load_checkpoint(Path(teacher_dir) / "model.pt", model)
        return model.eval()

    def build_student(self, recipe, splits: Splits, out_dir: Path, teacher_path: Optional[Path] = None) -> nn.Module:
        from ..models import count_params, save_checkpoint
        from ..models.text import save_tokenizer
        import torch

        torch.manual_seed(recipe.seed)
        cfg = recipe.student
        model = self.untrained_student(recipe, splits, cfg.params)
        keep = self._kept_tokens(recipe, splits, model)  # found once, by untrained_student
        save_tokenizer(model, out_dir / "tokenizer")
        save_checkpoint(out_dir / "model.pt", model, arch=cfg.arch)
        config = model.encoder.config
        _io.write_json(out_dir / "meta.json", {"arch": cfg.arch, "params": cfg.params, "parameters": count_params(model),
                                               "num_heads": config.num_attention_heads, "hidden_size": config.hidden_size,
                                               "vocab": len(model.tokenizer), "kept_token_ids": keep})
        return model

    def untrained_student(self, recipe, splits: Splits, params: dict) -> nn.Module:
        """The student built with ``params``, its vocabulary pruned when ``student.prune_vocab`` asks."""
        from ..models import build_model
        from ..models.text import prune_vocab_

        model = build_model(recipe.student.arch, params, (), splits.num_classes, "student")
        keep = self._kept_tokens(recipe, splits, model)
        return prune_vocab_(model, keep) if keep else model

    def _kept_tokens(self, recipe, splits: Splits, model: nn.Module) -> Optional[list[int]]:
        """The token ids ``student.prune_vocab`` keeps: those of every text the run reads (streamed split by split),
        found once per task (the size stage's candidates share one tokenizer)."""
        from ..models.text import pruned_vocab

        if not recipe.student.prune_vocab:
            return None
        if self._keep is None:
            self._keep = pruned_vocab(model.tokenizer, _all_texts(splits))
        return self._keep

    def load_student(self, recipe, splits: Splits, path: Path) -> nn.Module:
        from ..models import build_model, load_checkpoint
        from ..models.text import prune_vocab_

        model = build_model(recipe.student.arch, recipe.student.params, (), splits.num_classes, "student")
        keep = _io.read_json(self._stage_dir("student") / "meta.json").get("kept_token_ids")
        if keep:
            prune_vocab_(model, keep)
        load_checkpoint(path, model)
        return model

    # --- inputs, metrics, bundle ------------------------------------------------------------------

    def export_inputs(self, model: nn.Module, split: SampleSet, n: int) -> dict[str, np.ndarray]:
        texts = split.read(np.arange(min(n, len(split))))
        enc = model.tokenizer(texts, padding=True, truncation=True, max_length=model.max_seq_length, return_tensors="np")
        return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}

    def bundle_metadata(self, splits: Splits) -> dict:
        return {"task": self.name, "labels": list(splits.labels),
                "preprocessing": {"inputs": ["input_ids", "attention_mask"], "tokenizer": "tokenizer/",
                                  "pooling": "mean", "dataset": splits.name}}

    def bundle_files(self, role: str) -> list[Path]:
        folder = self._stage_dir(role) / "tokenizer"
        return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def _stage_dir(self, role: str) -> Path:
        if self.run_dir is None:
            raise ConfigError(f"the {self.name} task needs its run folder to find the {role}'s tokenizer.")
        return self.run_dir / ("01_teacher" if role == "teacher" else "02_student")

    def onnx_outputs(self, onnx_path, texts: Sequence[str], role: str, batch_size: int = 64) -> np.ndarray:
        """The exported model's outputs for ``texts``, tokenised with the ``role``'s tokenizer."""
        return onnx_text_outputs(onnx_path, texts, self._stage_dir(role) / "tokenizer", batch_size)


def onnx_text_outputs(onnx_path, texts: Sequence[str], tokenizer_dir, batch_size: int = 64) -> np.ndarray:
    """An exported text model's outputs for ``texts``, tokenised with the tokenizer saved in ``tokenizer_dir``,
    batched by length (similar lengths pad little), in the order of ``texts``."""
    from ..models.text import load_tokenizer
    from ..verify import model_session

    tok = load_tokenizer(tokenizer_dir)
    sess = model_session(onnx_path)
    names = {i.name for i in sess.get_inputs()}
    order = np.argsort([len(s) for s in texts], kind="stable")
    out = []
    for i in range(0, len(order), batch_size):
        chunk = [texts[j] for j in order[i:i + batch_size]]
        enc = tok(chunk, padding=True, truncation=True, max_length=EVAL_MAX_TOKENS, return_tensors="np")
        out.append(sess.run(None, {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask") if k in names})[0])
    res = np.concatenate(out)
    back = np.empty_like(res)
    back[order] = res
    return back


def _all_texts(splits: Splits):
    for part in (splits.train, splits.val, splits.test):
        for start in range(0, len(part), 4096):
            idx = np.arange(start, min(start + 4096, len(part)))
            yield from part.read(idx)
            if hasattr(part, "s2"):  # scored pairs: the second sentences too
                yield from (part.s2[int(i)] for i in idx)


@TASKS.register("embedding", help="sentence encoders: texts -> L2-normalised embedding; metric: STS-B Spearman")
class Embedding(_TextTask):
    name = "embedding"

    def val_metric(self, model: nn.Module, split: SampleSet, workers: Optional[int] = None) -> tuple[str, float]:
        import torch

        def encode(texts):
            with torch.no_grad():
                model.eval()
                outs = [model(**model.encode_inputs(texts[i:i + 128])).cpu().numpy() for i in range(0, len(texts), 128)]
            return np.concatenate(outs)

        was = model.training
        value = spearman(split, encode)
        model.train(was)
        return "spearman", value

    def metric(self, onnx_path: str | os.PathLike, split: SampleSet, role: str = "student") -> dict:
        value = spearman(split, lambda texts: self.onnx_outputs(onnx_path, texts, role))
        return {"name": "spearman", "value": value}

    def metric_samples(self, split: SampleSet) -> int:
        return len(split)


def spearman(pairs, encode) -> float:
    """Spearman rank correlation between the gold scores and the cosine similarity of the embeddings
    (:func:`edgedistill.text.stsb.spearman`), refusing a split that is not scored pairs."""
    from ..text import stsb

    if not hasattr(pairs, "s2"):
        raise ConfigError("the embedding task is evaluated on scored sentence pairs (STS-B); use a text dataset "
                          "whose validation and test splits are pairs (text-corpus, text-file).")
    return stsb.spearman(pairs, encode)


@TASKS.register("text-classification", help="a transformer teacher's logits and hidden states into a smaller "
                                            "transformer; metric: accuracy")
class TextClassification(_TextTask):
    name = "text-classification"

    def val_metric(self, model: nn.Module, split: SampleSet, workers: Optional[int] = None) -> tuple[str, float]:
        from ..distill.train import evaluate_accuracy

        return "acc", evaluate_accuracy(model, split, batch_size=128, workers=workers)

    def metric(self, onnx_path: str | os.PathLike, split: SampleSet, role: str = "student") -> dict:
        correct = count = 0
        for start in range(0, len(split), 1024):  # streamed: a chunk of texts at a time
            idx = np.arange(start, min(start + 1024, len(split)))
            logits = self.onnx_outputs(onnx_path, split.read(idx), role)
            y = split.y[idx]
            correct += int((logits.argmax(1)[y >= 0] == y[y >= 0]).sum())
            count += int((y >= 0).sum())
        return {"name": "accuracy", "value": correct / count if count else float("nan")}
