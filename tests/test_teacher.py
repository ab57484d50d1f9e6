"""A teacher that comes with trained weights is used as given: never trained further unless teacher.epochs
asks, and the stage's first line says which weights and which preprocessing they need."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

from edgedistill.models import build_model, save_checkpoint
from edgedistill.teacher import DEFAULT_EPOCHS, prepare_teacher, teacher_weights

PARAMS = {"width": 4, "depth": 1}


@pytest.fixture
def ckpt(tmp_path, digits_splits):
    torch.manual_seed(123)
    model = build_model("cnn", PARAMS, digits_splits.input_shape, digits_splits.num_classes, "t")
    save_checkpoint(tmp_path / "user_teacher.pt", model)
    return tmp_path / "user_teacher.pt", model.state_dict()


def _same(model, state) -> bool:
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_a_checkpoint_is_loaded_with_no_training_and_says_so(tiny_recipe, digits_splits, ckpt, tmp_path):
    path, state = ckpt
    tiny_recipe.teacher.params, tiny_recipe.teacher.checkpoint, tiny_recipe.teacher.epochs = PARAMS, str(path), None
    said = []
    model = prepare_teacher(tiny_recipe, digits_splits, tmp_path / "t", log=said.append)
    assert _same(model, state)  # the user's weights, untouched
    assert not (tmp_path / "t" / "checkpoints").exists()  # fit never ran
    assert said[0] == f"[teacher] teacher.checkpoint {path}, used as given (not trained; teacher.epochs > 0 would fine-tune it)"
    assert said[1] == ("[teacher] it must have been trained on inputs preprocessed as [data.preprocess] says: "
                       "x * 0.0625, minus mean [0.3], divided by std [0.4]")
    meta = json.loads((tmp_path / "t" / "meta.json").read_text())
    assert meta["epochs"] == 0 and meta["source"] == f"teacher.checkpoint {path}"


def test_a_checkpoint_with_epochs_is_fine_tuned_and_the_first_line_says_so(tiny_recipe, digits_splits, ckpt, tmp_path):
    path, state = ckpt
    tiny_recipe.teacher.params, tiny_recipe.teacher.checkpoint, tiny_recipe.teacher.epochs = PARAMS, str(path), 1
    said = []
    model = prepare_teacher(tiny_recipe, digits_splits, tmp_path / "t", log=said.append)
    assert said[0] == f"[teacher] fine-tuning teacher.checkpoint {path} for 1 epoch(s), as teacher.epochs = 1 asks"
    assert not _same(model, state)
    assert json.loads((tmp_path / "t" / "meta.json").read_text())["epochs"] == 1


def test_a_factory_params_checkpoint_is_used_as_given_too(tiny_recipe, digits_splits, ckpt, tmp_path, monkeypatch):
    path, state = ckpt
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        from edgedistill.models import build_model

        def build(input_shape, num_classes):
            return build_model("cnn", {"width": 4, "depth": 1}, input_shape, num_classes, "t")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    tiny_recipe.teacher.arch, tiny_recipe.teacher.epochs = "factory", None
    tiny_recipe.teacher.params = {"factory": "my_models:build", "checkpoint": str(path)}
    said = []
    try:
        model = prepare_teacher(tiny_recipe, digits_splits, tmp_path / "t", log=said.append)
    finally:
        sys.modules.pop("my_models", None)
    assert _same(model, state) and said[0].startswith(f"[teacher] params.checkpoint {path}, used as given")


def test_a_teacher_without_weights_trains_for_the_default_epochs(tiny_recipe, digits_splits):
    model = build_model("cnn", PARAMS, digits_splits.input_shape, digits_splits.num_classes, "t")
    tiny_recipe.teacher.epochs = None
    said = []
    assert teacher_weights(tiny_recipe.teacher, model, log=said.append) == (None, DEFAULT_EPOCHS)
    assert said == [f"[teacher] training cnn for {DEFAULT_EPOCHS} epoch(s) (teacher.epochs)"]


def test_student_arch_teacher_delivers_the_teacher_itself_compressed(tiny_recipe, tmp_path):
    """No smaller network: the run quantizes, measures and bundles the user's own (here: trained) teacher."""
    from edgedistill.pipeline import run

    tiny_recipe.student.arch, tiny_recipe.student.params = "teacher", {}
    tiny_recipe.distill.epochs, tiny_recipe.qat.enabled = 0, False
    report = run(tiny_recipe, run_dir=tmp_path, log=lambda line: None)
    by = {m["name"]: m for m in report["models"]}
    assert set(by) == {"teacher_fp32", "student_fp32", "student_int8"}
    assert by["student_fp32"]["metric"] == by["teacher_fp32"]["metric"]  # the same network, the same weights
    assert by["student_fp32"]["size_mb"] == pytest.approx(by["teacher_fp32"]["size_mb"], rel=0.02)
    import onnx

    int8 = onnx.load(str(tmp_path / by["student_int8"]["path"])).graph
    assert any(n.op_type == "QuantizeLinear" for n in int8.node)
    teacher = torch.load(tmp_path / "01_teacher" / "model.pt", weights_only=True)["state_dict"]
    student = torch.load(tmp_path / "03_distill" / "model.pt", weights_only=True)["state_dict"]
    assert teacher.keys() == student.keys() and all(torch.equal(teacher[k], student[k]) for k in teacher)
    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    assert "the cnn teacher itself, compressed with edgedistill, INT8." in card
    # the report: nothing was distilled, so no distill curves (its curves.csv is header-only), the teacher's are there
    pngs = sorted(p.name for p in (tmp_path / "report").glob("curves_*.png"))
    assert pngs == ["curves_teacher.png"] and (tmp_path / "03_distill" / "curves.csv").is_file()
    assert report["comparisons"][0]["name"] == "student_fp32" and report["comparisons"][0]["points_lost"] == 0


def test_student_arch_teacher_takes_no_params_of_its_own(tiny_recipe, digits_splits):
    from edgedistill.errors import ConfigError
    from edgedistill.tasks import get_task

    tiny_recipe.student.arch, tiny_recipe.student.params = "teacher", {"width": 3}
    with pytest.raises(ConfigError, match=r"student\.params: the student is the teacher itself"):
        get_task("classification").preflight(tiny_recipe, digits_splits)
