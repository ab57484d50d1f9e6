"""Distil a sentence-encoder student against cached teacher embeddings.

The teacher (frozen, in eval, under no_grad) encoded the transfer corpus once; its normalised
embeddings are the teacher's ``"logits"``. Each step: tokenise a batch of 64 sentences, run the
student, sum the recipe's weighted loss terms from the shared registry (``simmat``, ``embed_cos``,
``embed_mse``; projection heads live in the losses and are never exported). The checkpoint with the
best STS-B dev Spearman is kept (select on dev; test is reported once, elsewhere).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field as dc_field
from typing import Sequence

import numpy as np
import torch

from .._schema import field
from ..distill.losses import LossContext, build_loss
from ..errors import ConfigError
from . import stsb
from .student import TextEncoder


@dataclass
class LossTerm:
    name: str = "simmat"
    weight: float = field(1.0, ge=0.0)
    params: dict = dc_field(default_factory=dict)


@dataclass
class TextDistillConfig:
    epochs: int = field(3, ge=1)
    batch_size: int = field(64, ge=2)
    lr: float = field(1e-4, gt=0.0)
    warmup: float = field(0.1, ge=0.0, le=1.0)
    max_seq_length: int = field(64, ge=8, le=512)
    seed: int = 0
    eval_every: int = field(0, ge=0)  # steps between dev evaluations; 0 = once per epoch


def encode(model: TextEncoder, tokenizer, sentences: Sequence[str], batch_size: int = 128, max_seq_length: int = 128) -> np.ndarray:
    """Normalised embeddings [N, D] from a torch TextEncoder."""
    was = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(sentences), batch_size):
            b = tokenizer(list(sentences[i:i + batch_size]), padding=True, truncation=True, max_length=max_seq_length, return_tensors="pt")
            e = model(b["input_ids"], b["attention_mask"])
            e = e["logits"] if isinstance(e, dict) else e
            out.append(torch.nn.functional.normalize(e, dim=1).numpy())
    model.train(was)
    return np.concatenate(out)


def distill_text(student: TextEncoder, tokenizer, sentences: Sequence[str], teacher_emb: np.ndarray,
                 cfg: TextDistillConfig, losses: Sequence[LossTerm], dev: stsb.Pairs | None = None,
                 log=sys.stderr) -> tuple[TextEncoder, dict]:
    """Train ``student`` in place on the weighted sum of ``losses``; return (best-on-dev copy, history).

    ``teacher_emb`` is [N, D_teacher]; without ``dev`` the last state is returned.
    """
    if len(sentences) != len(teacher_emb):
        raise ConfigError(f"distill: {len(sentences)} sentences but {len(teacher_emb)} teacher embeddings; re-encode the corpus.")
    if len(sentences) < cfg.batch_size:
        raise ConfigError(f"distill.batch_size={cfg.batch_size} exceeds the corpus ({len(sentences)} sentences); lower it.")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    ctx = LossContext(batch_size=cfg.batch_size)
    terms = [(build_loss(t.name, t.params, ctx, f"distill.losses[{i}]"), t.weight) for i, t in enumerate(losses)]
    for loss, _ in terms:
        if loss.needs_teacher_features:
            raise ConfigError(f"distill.losses: {type(loss).__name__} needs teacher hidden states, which cached teacher embeddings do not hold; use simmat / embed_cos / embed_mse.")
    # dry run: the losses build their projection heads from the output widths
    student.as_dict = True
    s_dim, t_dim = student.dim, teacher_emb.shape[1]
    for loss, _ in terms:
        loss.build({"logits": torch.Size([2, s_dim])}, {"logits": torch.Size([2, t_dim])})
    params = list(student.parameters()) + [p for loss, _ in terms for p in loss.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    steps_per_epoch = len(sentences) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    warm = max(1, int(cfg.warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    eval_every = cfg.eval_every or steps_per_epoch
    teacher_t = torch.from_numpy(np.ascontiguousarray(teacher_emb, dtype=np.float32))
    history = {"step": [], "loss": [], "dev_spearman": [], "seconds": 0.0}
    best, best_dev, step, t0 = copy.deepcopy(student), -math.inf, 0, time.time()
    student.train()
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(sentences))
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            enc = tokenizer([sentences[i] for i in idx], padding=True, truncation=True, max_length=cfg.max_seq_length, return_tensors="pt")
            s_out = student(enc["input_ids"], enc["attention_mask"])
            t_out = {"logits": teacher_t[torch.as_tensor(idx)]}
            loss = sum(w * term(s_out, t_out, None) for term, w in terms)
            if not torch.isfinite(loss):
                raise ConfigError(f"distill: loss became {loss.item()} at step {step}; lower distill.lr.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            history["step"].append(step)
            history["loss"].append(float(loss.detach()))
            if dev is not None and (step % eval_every == 0 or step == total):
                rho = stsb.spearman(dev, lambda xs: encode(student, tokenizer, xs, max_seq_length=cfg.max_seq_length))
                history["dev_spearman"].append([step, rho])
                print(f"epoch {epoch + 1} step {step}/{total} loss {float(loss.detach()):.5f} dev {rho:.4f} ({time.time() - t0:.0f}s)", file=log, flush=True)
                if rho > best_dev:
                    best, best_dev = copy.deepcopy(student), rho
    history["seconds"] = round(time.time() - t0, 1)
    history["best_dev_spearman"] = best_dev if dev is not None else None
    return (best if dev is not None else student).eval(), history
