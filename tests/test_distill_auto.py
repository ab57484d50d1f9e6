"""``distill.alpha`` / ``distill.temperature = "auto"``: what is searched, and that the search picks the teacher when
it knows what the labels do not, and the labels alone when the teacher misleads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgedistill.data import ArraySplit, Splits
from edgedistill.distill import auto
from edgedistill.distill.cache import build_cache
from edgedistill.distill.teachers import TorchTeacher
from edgedistill.errors import ConfigError
from edgedistill.recipe import recipe_from_dict
from edgedistill.report_render import distillation_line, render_markdown

W = np.random.default_rng(7).standard_normal((5, 64)).astype(np.float32)  # the truth: y = argmax(W x)


def _split(n, labelled=None, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)
    y = (x.reshape(n, 64) @ W.T).argmax(1).astype(np.int64)
    if labelled is not None:
        y[labelled:] = -1
    return ArraySplit(x, y)


class _Linear(nn.Module):
    """A teacher that knows W (``shift`` = 1: it names the next class instead, consistently wrong)."""

    def __init__(self, shift=0):
        super().__init__()
        self.register_buffer("w", torch.from_numpy(np.roll(W, shift, axis=0)))

    def forward(self, x):
        return 4.0 * x.flatten(1) @ self.w.T


def _recipe(**distill):
    return recipe_from_dict({"data": {"batch_size": 32}, "student": {"arch": "mlp", "params": {"hidden": [32]}},
                             "distill": {"epochs": 35, "lr": 1e-2, "device": "cpu", "auto_budget": 1.0, **distill}})


def _student():
    from edgedistill.models import build_model

    torch.manual_seed(0)
    return build_model("mlp", {"hidden": [32]}, (1, 8, 8), 5, "student")


def _distill(tmp_path, train, teacher, **distill):
    from edgedistill.distill.stage import distill as run

    splits = Splits(train, _split(300, seed=1), _split(64, seed=2), num_classes=5, input_shape=(1, 8, 8), name="toy")
    return run(_student(), teacher, splits, _recipe(**distill), tmp_path / "distill", cache_dir=tmp_path / "cache")


def test_the_grid_tries_labels_only_once_and_only_what_a_loss_reads():
    cfg = _recipe().distill
    assert auto.candidates(cfg, auto.to_search(cfg)) == [
        {"alpha": 1.0, "temperature": 1.0}, *({"alpha": a, "temperature": t} for a in (0.5, 0.1) for t in (1, 2))]
    only_t = _recipe(alpha=0.3).distill
    assert auto.to_search(only_t) == ["temperature"]
    assert [c["temperature"] for c in auto.candidates(only_t, ["temperature"])] == [1.0, 2.0]
    fixed_in_term = _recipe(losses=[{"name": "kd", "params": {"alpha": 0.2, "temperature": 3.0}}]).distill
    assert auto.to_search(fixed_in_term) == []  # the term sets both: nothing of [distill] is read
    hint = _recipe(losses=[{"name": "ce"}, {"name": "hint", "params": {"student_layer": "net.1",
                                                                      "teacher_layer": "net.1"}}]).distill
    assert auto.to_search(hint) == []


def test_auto_chooses_the_teacher_when_it_knows_the_unlabelled_data(tmp_path):
    meta = _distill(tmp_path, _split(320, labelled=16), _Linear())
    s = meta["settings"]
    assert s["searched"] == ["alpha", "temperature"] and len(s["candidates"]) == 5
    scores = {(c["alpha"], c["temperature"]): c["val_acc"] for c in s["candidates"]}
    assert s["alpha"] < 1.0 and scores[(s["alpha"], s["temperature"])] == max(scores.values())
    assert max(scores.values()) > scores[(1.0, 1.0)] + s["margin"]  # 16 labels alone teach far less
    assert s["epochs_per_candidate"] == 7 and s["samples_share"] == 1.0  # auto_budget = 1.0 of 35 epochs, 5 candidates
    assert meta["losses"][0]["name"] == "kd" and 0 < s["share_of_stage_seconds"] < 1


def test_auto_falls_back_to_the_labels_when_the_teacher_misleads(tmp_path):
    s = _distill(tmp_path, _split(320), _Linear(shift=1))["settings"]
    assert (s["alpha"], s["temperature"]) == (1.0, 1.0)
    assert all(c["val_acc"] < s["candidates"][0]["val_acc"] for c in s["candidates"][1:])


def test_distilling_must_beat_the_labels_by_more_than_the_validation_noise():
    rows = [{"alpha": 1.0, "temperature": 1.0, "val_acc": 0.80}, {"alpha": 0.5, "temperature": 1.0, "val_acc": 0.83},
            {"alpha": 0.1, "temperature": 2.0, "val_acc": 0.84}]
    margin = auto._margin(rows, "val_acc", 600)  # 2 standard errors of a difference of two accuracies near 0.8
    assert margin == pytest.approx(2 * (2 * 0.8 * 0.2 / 600) ** 0.5, abs=1e-4) and 0.045 < margin < 0.047
    assert auto.pick(rows, "val_acc", margin) == 0  # 4 points on 600 images: within the noise, labels only
    assert auto.pick(rows, "val_acc", auto._margin(rows, "val_acc", 5000)) == 2  # 0.016 on 5 000: distil
    assert auto._margin(rows[1:], "val_acc", 600) is None  # alpha given: no labels-only candidate to beat
    assert auto._margin(rows, "val_spearman", 600) is None


def test_numbers_are_used_as_given_and_nothing_is_searched(tmp_path):
    meta = _distill(tmp_path, _split(64), _Linear(), epochs=1, alpha=0.3, temperature=4.0)
    assert meta["settings"] == {"searched": [], "alpha": 0.3, "temperature": 4.0}
    assert not (tmp_path / "distill" / "auto").exists()
    meta = _distill(tmp_path / "none", _split(64), _Linear(), epochs=0)  # no training: no search either
    assert meta["settings"] == {"searched": [], "alpha": "auto", "temperature": "auto"}
    assert not (tmp_path / "none" / "distill" / "auto").exists()


def test_a_search_over_a_subset_reads_the_cache_at_the_right_positions(tmp_path):
    # budget 0.01 of 35 epochs of 640 samples, over 5 candidates: 44 samples each, raised to MIN_SAMPLES of 640;
    # the cache checks each batch's fingerprints, so a wrong position would stop the run
    meta = _distill(tmp_path, _split(640, labelled=32), _Linear(), cache=True, cache_top_k=5, auto_budget=0.01)
    s = meta["settings"]
    assert s["samples_per_epoch"] == auto.MIN_SAMPLES < 640 and s["epochs_per_candidate"] == 1
    (stored,) = (tmp_path / "cache").glob("teacher_*/meta.json")
    assert json.loads(stored.read_text())["temperature"] == max(auto.TEMPERATURES)


def test_auto_without_a_validation_split_says_so_and_uses_the_middle_of_the_grid(tmp_path):
    from edgedistill.distill.stage import distill as run

    splits = Splits(_split(64), _split(0), _split(16, seed=2), num_classes=5, input_shape=(1, 8, 8), name="toy")
    said = []
    meta = run(_student(), _Linear(), splits, _recipe(epochs=1), tmp_path / "d", log=said.append)
    assert meta["settings"]["searched"] == [] and (meta["settings"]["alpha"], meta["settings"]["temperature"]) == (0.5, 2.0)
    assert said == ["[distill] auto: no validation split to choose on (data.val_fraction = 0?): alpha 0.5, T 2 used "
                    "unchosen; give a validation split or set them as numbers"]


def test_recipe_takes_auto_or_a_number_in_range():
    assert _recipe().distill.alpha == "auto" and _recipe(temperature=2).distill.temperature == 2.0
    with pytest.raises(ConfigError, match=r"distill.alpha: 1.5 is out of range; it must be <= 1.0"):
        _recipe(alpha=1.5)
    with pytest.raises(ConfigError, match=r"distill.temperature: expected a number or 'auto', got 'high'"):
        _recipe(temperature="high")


def test_the_report_says_what_was_chosen_and_why():
    settings = {"searched": ["alpha", "temperature"], "alpha": 1.0, "temperature": 1.0, "metric": "val_acc",
                "candidates": [{"alpha": 1.0, "temperature": 1.0, "val_acc": 0.91},
                               {"alpha": 0.5, "temperature": 4.0, "val_acc": 0.88}],
                "epochs_per_candidate": 1, "samples_per_epoch": 900, "seconds": 12.0, "share_of_stage_seconds": 0.19}
    line = distillation_line({"distillation": settings})
    assert line.startswith("Chosen on the validation split: alpha 1, temperature 1 (labels only: the teacher did "
                           "not help on validation).")
    assert "alpha 0.5, T 4: 0.8800" in line and "took 12 s, 19 % of the distill stage" in line
    assert distillation_line({}) == "" and distillation_line({"distillation": {"searched": []}}) == ""
    assert distillation_line({"distillation": {"searched": [], "note": "no validation split"}}) == \
        "Not chosen: no validation split."
    report = {"target": {"name": "t", "architecture": "x86_64", "cores": 2, "budgets": {}}, "deliverable": None,
              "models": [], "comparisons": [], "warnings": [], "distillation": settings}
    assert "## Distillation\n\n" + line in render_markdown(report)


def test_kd_at_alpha_one_never_reads_the_teacher():
    from edgedistill.distill.losses import LossContext, build_loss

    kd = build_loss("kd", {}, LossContext(alpha=1.0, temperature=2.0), "x")
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    assert kd({"logits": s}, {"logits": t}, torch.full((4,), -1)).item() == 0.0  # no label: nothing to learn
    torch.testing.assert_close(kd({"logits": s}, {"logits": t}, torch.tensor([0, 1, 2, 3])),
                               nn.functional.cross_entropy(s, torch.tensor([0, 1, 2, 3])))


def test_cache_logits_serve_any_temperature():
    """The cache stores soft labels at the grid's highest T; the logits it gives back are the teacher's up to a
    constant, so KD at a lower T reads the same distribution."""
    x = _split(16).x
    teacher = _Linear()
    cache = build_cache(TorchTeacher(teacher), x, key="k", temperature=max(auto.TEMPERATURES), k=5)
    got = cache.teacher_outputs(torch.arange(16), torch.from_numpy(x))["logits"]
    with torch.no_grad():
        want = teacher(torch.from_numpy(x))
    torch.testing.assert_close(torch.softmax(got, 1), torch.softmax(want, 1), atol=2e-3, rtol=0)


def test_an_interrupted_search_resumes_to_the_same_choice(tmp_path, monkeypatch):
    from edgedistill import _signals

    train = _split(320, labelled=16)
    whole = _distill(tmp_path / "whole", train, _Linear())["settings"]
    monkeypatch.setattr(_signals, "stop_requested", lambda: (tmp_path / "cut" / "distill" / "auto" / "candidate_2").exists())
    with pytest.raises(_signals.Interrupted):
        _distill(tmp_path / "cut", train, _Linear())
    monkeypatch.setattr(_signals, "stop_requested", lambda: False)
    resumed = _distill(tmp_path / "cut", train, _Linear())["settings"]
    assert [c["val_acc"] for c in resumed["candidates"]] == [c["val_acc"] for c in whole["candidates"]]
    assert (resumed["alpha"], resumed["temperature"]) == (whole["alpha"], whole["temperature"])
