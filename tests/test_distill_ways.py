"""The ways teachers teach: the loop's taps, black-box / ensemble teachers, self-distillation,
unlabelled data and the teacher soft-label cache."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgedistill.data import ArraySplit
from edgedistill.distill.cache import (SoftLabelCache, build_cache, load_or_build, refuse_if_augmented,
                                       storage_report)
from edgedistill.distill.losses import LossContext, build_loss
from edgedistill.distill.teachers import (CachedTeacher, CallableTeacher, EnsembleTeacher, NoTeacher, OnnxTeacher,
                                          TorchTeacher, as_teacher)
from edgedistill.distill.train import FitConfig, Term, _term_value, check_term_paths, fit
from edgedistill.errors import ConfigError, StageError
from edgedistill.models import build_model

from onnx_models import conv as onnx_conv


def _data(n=96, labelled=True, seed=0):
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, 1, 8, 8)).astype(np.float32)
    y = g.integers(0, 5, n).astype(np.int64) if labelled else np.full(n, -1, dtype=np.int64)
    return ArraySplit(x, y)


def _cnn(width=4, depth=2, seed=0):
    torch.manual_seed(seed)
    return build_model("cnn", {"width": width, "depth": depth}, (1, 8, 8), 5, "t")


def _terms(*specs):
    ctx = LossContext(num_classes=5, alpha=0.3, temperature=4.0)
    return [Term(f"{n}{i}", build_loss(n, dict(p), ctx, f"distill.losses[{i}]"), 1.0) for i, (n, p) in enumerate(specs)]


CFG = dict(epochs=1, lr=1e-2, batch_size=32, device="cpu")


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_feature_distillation_trains_student_not_teacher_and_removes_hooks(tmp_path):
    student, teacher = _cnn(4, 2), _cnn(8, 2, seed=1)
    s0 = {k: v.clone() for k, v in student.state_dict().items()}
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    terms = _terms(("kd", {}), ("hint", {"student_layer": "features.2", "teacher_layer": "features.2"}),
                   ("at", {"student_layer": "features", "teacher_layer": "features"}))
    res = fit(student, _data(), FitConfig(**CFG), terms, tmp_path, teacher=teacher)
    assert _hooks(student) == 0 and _hooks(teacher) == 0
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t0.items())  # BN stats too: teacher in eval
    assert not torch.equal(s0["features.0.weight"], student.state_dict()["features.0.weight"])
    assert {"loss_kd0", "loss_hint1", "loss_at2", "loss_total"} <= set(res.history[0])
    assert (tmp_path / "curves.csv").read_text().splitlines()[0].count("loss_") == 4


def test_a_torch_teacher_wrapper_is_tapped_like_its_module(tmp_path):
    teacher = _cnn(8, 2, seed=1)
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    terms = _terms(("kd", {}), ("hint", {"student_layer": "features.2", "teacher_layer": "features.2"}))
    res = fit(_cnn(), _data(), FitConfig(**CFG), terms, tmp_path, teacher=TorchTeacher(teacher))
    assert np.isfinite(res.history[0]["loss_hint1"]) and _hooks(teacher) == 0
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t0.items())


def test_every_teacher_a_caller_may_pass_becomes_one_teacher():
    module = _cnn(8, 2, seed=1).train()
    wrapped = as_teacher(module)  # a white box, frozen: eval, no gradients, no graph
    assert isinstance(wrapped, TorchTeacher) and wrapped.model is module and wrapped.tappable
    assert not module.training and not any(p.requires_grad for p in module.parameters())
    module.train()  # a parent's .train() does not wake it up
    x = torch.from_numpy(_data(4).x)
    out = wrapped.outputs(x, ["features.2"])
    assert not module.training and set(out) == {"logits", "features.2"} and out["logits"].grad_fn is None
    assert _hooks(module) == 0 and wrapped.output_shapes(x, ["features.2"])["features.2"] == out["features.2"].shape
    assert isinstance(as_teacher(None), NoTeacher) and as_teacher(None).outputs(x) == {}
    fn = as_teacher(lambda xb: torch.zeros(len(xb), 5))
    assert isinstance(fn, CallableTeacher) and not fn.tappable and fn.output_shapes(x) == {"logits": torch.Size([4, 5])}
    assert as_teacher(fn) is fn and fn.shares() is None
    assert fn.described == "a Python callable teacher, which supplies outputs only"
    ens = EnsembleTeacher([TorchTeacher(_cnn(4, 1, seed=2)), fn], mix="losses")
    assert ens.to("meta") is ens and ens.teachers[0].model.head.weight.device.type == "meta"  # members follow
    assert ens.shares() == [0.5, 0.5] and not ens.tappable
    cache = build_cache(TorchTeacher(_cnn(8, 2, seed=1)), _data(8).x, key="k", temperature=4.0, k=2)
    cached = CachedTeacher(cache).to("cpu")
    assert cached.output_shapes(x) == {"logits": torch.Size([4, 5])} and not cached.tappable
    torch.testing.assert_close(cached.outputs(x, (), torch.arange(4))["logits"],
                               cache.teacher_outputs(torch.arange(4), x)["logits"])


def test_bad_module_path_is_rejected_with_valid_names():
    terms = _terms(("hint", {"student_layer": "layer9", "teacher_layer": "features"}))
    with pytest.raises(ConfigError, match=r"distill.losses\[0\].params.student_layer: module path 'layer9' does not exist in the model; valid paths are: features, features.0"):
        check_term_paths(terms, _cnn(), _cnn())


def test_onnx_teacher_is_a_black_box(tmp_path):
    path = onnx_conv(tmp_path / "t.onnx", classes=5)
    teacher = OnnxTeacher(path)
    x = torch.from_numpy(_data(8).x)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(teacher(x)["logits"].numpy(), ref, rtol=1e-6)
    # Output losses train against it; a feature loss that needs its internals is refused before training.
    fit(_cnn(), _data(), FitConfig(**CFG), _terms(("kd", {}), ("rkd", {})), tmp_path / "a", teacher=teacher)
    with pytest.raises(ConfigError, match=r"distill.losses\[1\]: loss 'hint1' reads teacher layer\(s\) features, but there is an ONNX model teacher, which supplies outputs only"):
        fit(_cnn(), _data(), FitConfig(**CFG), _terms(("kd", {}), ("hint", {"student_layer": "features", "teacher_layer": "features"})),
            tmp_path / "b", teacher=teacher)


def test_onnx_teacher_bad_file_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ConfigError, match="is not a loadable ONNX model"):
        OnnxTeacher(bad)
    with pytest.raises(ConfigError, match="does not exist; give the path of an .onnx file"):
        OnnxTeacher(tmp_path / "missing.onnx")


def test_callable_and_ensemble_teachers(tmp_path):
    a, b = _cnn(4, 1, seed=2).eval(), _cnn(4, 1, seed=3).eval()
    ens = EnsembleTeacher([TorchTeacher(a), CallableTeacher(lambda x: b(x).detach().numpy())], weights=[3.0, 1.0])
    x = torch.from_numpy(_data(8).x)
    with torch.no_grad():
        expected = (3 * a(x) + b(x)) / 4
    out = ens(x)
    torch.testing.assert_close(out["logits"], expected)
    torch.testing.assert_close(out["logits@1"], b(x).detach())
    fit(_cnn(), _data(), FitConfig(**CFG), _terms(("kd", {})), tmp_path, teacher=ens)
    with pytest.raises(ConfigError, match="must be 2 non-negative numbers with a positive sum"):
        EnsembleTeacher([TorchTeacher(a), TorchTeacher(b)], weights=[1.0])


def test_ensemble_mixing_losses_averages_each_teachers_loss(tmp_path):
    a, b = _cnn(4, 1, seed=2).eval(), _cnn(4, 1, seed=3).eval()
    ens = EnsembleTeacher([TorchTeacher(a), TorchTeacher(b)], weights=[3.0, 1.0], mix="losses")
    x, y = torch.from_numpy(_data(16).x), torch.from_numpy(_data(16).y)
    s_out, t_out = {"logits": torch.randn(16, 5, requires_grad=True)}, ens(x)
    (kd,) = _terms(("kd", {}))
    per_teacher = _term_value(kd, s_out, t_out, y, ens.shares())
    expected = 0.75 * kd.loss(s_out, {"logits": t_out["logits@0"]}, y) + 0.25 * kd.loss(s_out, {"logits": t_out["logits@1"]}, y)
    torch.testing.assert_close(per_teacher, expected)
    mixed_logits = _term_value(kd, s_out, t_out, y, None)  # KD is not linear in the teacher's logits
    assert abs(per_teacher.item() - mixed_logits.item()) > 1e-4
    per_teacher.backward()
    assert s_out["logits"].grad is not None and s_out["logits"].grad.abs().sum() > 0

    student = _cnn()
    w0 = student.features[0].weight.detach().clone()
    res = fit(student, _data(), FitConfig(**CFG), _terms(("kd", {})), tmp_path / "a", teacher=ens)
    assert np.isfinite(res.history[0]["loss_kd0"]) and not torch.equal(w0, student.features[0].weight)
    with pytest.raises(ConfigError, match=r"distill.losses\[0\]: loss 'crd0' keeps state between steps"):
        fit(_cnn(), _data(), FitConfig(**CFG), _terms(("crd", {"student_layer": "logits", "teacher_layer": "logits"})),
            tmp_path / "b", teacher=ens)
    cache = build_cache(ens, _data().x, key="ens", temperature=4.0, k=5)
    with pytest.raises(ConfigError, match="'losses' needs each teacher's own outputs, but the teacher cache"):
        fit(_cnn(), _data(), FitConfig(**CFG), _terms(("kd", {})), tmp_path / "c", teacher=ens, teacher_cache=cache)
    with pytest.raises(ConfigError, match="teacher mix: 'mean' is not one of logits, losses"):
        EnsembleTeacher([TorchTeacher(a), TorchTeacher(b)], mix="mean")


def test_self_distillation_heads_are_not_part_of_the_model(tmp_path):
    student = _cnn(4, 2)
    keys = set(student.state_dict())
    terms = _terms(("ce", {}), ("self_distill", {"student_layer": ["features.2"]}))
    res = fit(student, _data(), FitConfig(**CFG), terms, tmp_path, teacher=None)
    assert set(student.state_dict()) == keys  # the auxiliary head lives in the loss: nothing extra to export
    assert len(terms[1].loss.heads) == 1 and res.history[0]["loss_self_distill1"] > 0
    assert _hooks(student) == 0


def test_unlabelled_data_trains_on_the_teacher_alone(tmp_path):
    teacher = _cnn(8, 2, seed=1)
    res = fit(_cnn(), _data(labelled=False), FitConfig(**CFG), _terms(("kd", {}), ("dkd", {})), tmp_path, teacher=teacher)
    row = res.history[0]
    assert np.isfinite(row["loss_kd0"]) and row["loss_kd0"] > 0 and np.isnan(row["train_acc"])
    ce = build_loss("ce", {}, LossContext(), "x")
    assert float(ce({"logits": torch.randn(4, 5)}, {}, torch.full((4,), -1))) == 0.0


def test_cache_round_trip_and_reuse(tmp_path):
    teacher = _cnn(8, 2, seed=1).eval()
    calls = []

    def counted(x):
        calls.append(len(x))
        return teacher(x)

    wrapped = CallableTeacher(counted, name="counted")
    train = _data(70)
    cache, hit = load_or_build(tmp_path, wrapped, wrapped.fingerprint(), train.x, {"norm": 1}, temperature=4.0, k=3,
                               batch_size=32)
    assert not hit and sum(calls) == 70
    again, hit = load_or_build(tmp_path, wrapped, wrapped.fingerprint(), train.x, {"norm": 1}, temperature=4.0, k=3)
    assert hit and sum(calls) == 70  # the second student does not run the teacher
    rows, rows_again = cache.rows(np.arange(70)), again.rows(np.arange(70))
    np.testing.assert_array_equal(rows_again["probs"], rows["probs"])
    np.testing.assert_array_equal(rows_again["indices"], rows["indices"])
    assert rows["probs"].dtype == np.float16 and rows["indices"].dtype == np.int16 and rows["probs"].shape == (70, 3)
    _, hit = load_or_build(tmp_path, wrapped, wrapped.fingerprint(), train.x, {"norm": 2}, temperature=4.0, k=3)
    assert not hit  # other preprocessing, other key

    # The rebuilt logits give back the teacher's top-k probabilities at T.
    idx = torch.arange(10)
    x = torch.from_numpy(train.x[:10])
    with torch.no_grad():
        p_true = torch.softmax(teacher(x) / 4.0, 1)
    p_cached = torch.softmax(again.teacher_outputs(idx, x)["logits"] / 4.0, 1)
    top = p_true.topk(3, 1)
    torch.testing.assert_close(p_cached.gather(1, top.indices), top.values, atol=2e-3, rtol=0)
    torch.testing.assert_close(p_cached.sum(1), torch.ones(10))


def test_cache_with_all_classes_matches_the_live_teacher_loss(tmp_path):
    teacher = _cnn(8, 2, seed=1).eval()
    train = _data(40)
    cache = build_cache(TorchTeacher(teacher), train.x, key="k", temperature=4.0, k=5)
    cache.save(tmp_path / "c")
    loaded = SoftLabelCache.load(tmp_path / "c")
    kd = build_loss("kd", {}, LossContext(alpha=0.3, temperature=4.0), "x")
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    s = {"logits": torch.randn(40, 5)}
    with torch.no_grad():
        live = kd(s, {"logits": teacher(x)}, y)
    cached = kd(s, loaded.teacher_outputs(torch.arange(40), x), y)
    assert float(cached) == pytest.approx(float(live), rel=1e-3)
    fit(_cnn(), train, FitConfig(**CFG), _terms(("kd", {})), tmp_path / "run", teacher=None, teacher_cache=loaded)


def test_cache_refuses_augmentation_and_changed_inputs():
    with pytest.raises(ConfigError, match="the teacher cache is refused because data augmentation changes the inputs"):
        refuse_if_augmented(True)
    teacher = TorchTeacher(_cnn(8, 2, seed=1))
    train = _data(16)
    cache = build_cache(teacher, train.x, key="k", temperature=4.0, k=2)
    flipped = torch.from_numpy(train.x[:8]).flip(-1)
    with pytest.raises(StageError, match="these inputs differ from the ones the teacher labelled"):
        cache.teacher_outputs(torch.arange(8), flipped)


def test_cache_storage_for_1000_classes_top50_is_over_90_percent_smaller():
    r = storage_report(10000, 1000, 50)
    assert r["full_fp32_bytes"] == 10000 * 1000 * 4
    assert r["cache_bytes"] == 10000 * (50 * (2 + 2) + 4)
    assert r["saved_fraction"] >= 0.9
    # and a real cache's arrays take exactly what the report says
    g = torch.Generator().manual_seed(0)
    x = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    w = torch.randn(3, 1000, generator=g)
    cache = build_cache(lambda xb: {"logits": xb @ w}, x, key="k", temperature=1.0, k=50)
    assert cache.nbytes == storage_report(20, 1000, 50)["cache_bytes"]


def _splits(n=64):
    from edgedistill.data import Splits

    return Splits(_data(n), _data(16, seed=1), _data(16, seed=2), num_classes=5, input_shape=(1, 8, 8), name="toy")


def _recipe(**distill):
    from edgedistill.recipe import recipe_from_dict

    return recipe_from_dict({"data": {"batch_size": 32}, "student": {"params": {"width": 4, "depth": 2}},
                             "distill": {"epochs": 1, "lr": 1e-2, "device": "cpu", **distill}})


def test_recipe_teachers_main_onnx_torch_and_ensemble(tmp_path):
    from edgedistill.distill.teachers import recipe_teacher
    from edgedistill.models import save_checkpoint

    main, extra = _cnn(8, 2, seed=1), _cnn(4, 1, seed=4).eval()
    onnx_path = onnx_conv(tmp_path / "t.onnx", classes=5)
    save_checkpoint(tmp_path / "extra.pt", extra)
    alone = recipe_teacher(_recipe().distill, main, (1, 8, 8), 5)  # no extra teachers: the main one, a white box
    assert isinstance(alone, TorchTeacher) and alone.model is main and alone.tappable
    alone = recipe_teacher(_recipe(teacher_weight=0.0, teachers=[{"path": str(onnx_path)}]).distill, main, (1, 8, 8), 5)
    assert isinstance(alone, OnnxTeacher)
    cfg = _recipe(teacher_weight=2.0, teachers=[{"path": str(onnx_path), "weight": 1.0},
                                                {"kind": "torch", "path": str(tmp_path / "extra.pt"), "arch": "cnn",
                                                 "params": {"width": 4, "depth": 1}, "weight": 1.0}]).distill
    ens = recipe_teacher(cfg, main, (1, 8, 8), 5)
    x = torch.from_numpy(_data(8).x)
    with torch.no_grad():
        expected = (2 * main(x) + OnnxTeacher(onnx_path)(x)["logits"] + extra(x)) / 4
    torch.testing.assert_close(ens(x)["logits"], expected)
    assert ens.mix == "logits" and ens.weights == [2.0, 1.0, 1.0] and ens.shares() is None  # one averaged output
    cfg.teacher_mix = "losses"
    per_teacher = recipe_teacher(cfg, main, (1, 8, 8), 5)
    assert per_teacher.mix == "losses" and per_teacher.shares() == [0.5, 0.25, 0.25]
    with pytest.raises(ConfigError, match=r"distill.teachers\[0\].path: .*missing.onnx does not exist"):
        recipe_teacher(_recipe(teachers=[{"path": str(tmp_path / "missing.onnx")}]).distill, main, (1, 8, 8), 5)


def test_distill_stage_with_onnx_teacher_and_cache(tmp_path):
    from edgedistill.distill.stage import distill

    onnx_path = onnx_conv(tmp_path / "t.onnx", classes=5)
    recipe = _recipe(teacher_weight=0.0, teachers=[{"path": str(onnx_path)}], cache=True, cache_top_k=3,
                     losses=[{"name": "kd"}])
    meta = distill(_cnn(), _cnn(8, 2, seed=1), _splits(), recipe, tmp_path / "a")
    assert meta["teacher_cache"]["k"] == 3 and meta["teacher_cache"]["hit"] is False
    assert meta["teacher_cache"]["shards"] == 1
    assert len(list((tmp_path / "teacher_cache").glob("teacher_*/meta.json"))) == 1  # beside the stage folder
    again = distill(_cnn(seed=5), _cnn(8, 2, seed=1), _splits(), recipe, tmp_path / "b")  # a second student
    assert again["teacher_cache"]["hit"] is True
    bad = _recipe(teacher_weight=0.0, teachers=[{"path": str(onnx_path)}],
                  losses=[{"name": "nst", "params": {"student_layer": "features", "teacher_layer": "features"}}])
    with pytest.raises(ConfigError, match=r"distill.losses\[0\]: loss 'nst' reads teacher layer\(s\) features, but there is an ONNX model teacher"):
        distill(_cnn(), _cnn(8, 2, seed=1), _splits(), bad, tmp_path / "c")


def test_check_taps_rejects_bad_paths_before_any_stage(tmp_path):
    from edgedistill.distill.stage import check_taps

    ok = _recipe(losses=[{"name": "hint", "params": {"student_layer": "features.2", "teacher_layer": "features.5"}}])
    check_taps(ok, (1, 8, 8), 5)
    bad = _recipe(losses=[{"name": "hint", "params": {"student_layer": "features.2", "teacher_layer": "layer2.1"}}])
    with pytest.raises(ConfigError, match=r"distill.losses\[0\].params.teacher_layer: module path 'layer2.1' does not exist in the model; valid paths are: features, features.0"):
        check_taps(bad, (1, 8, 8), 5)
    cached = _recipe(cache=True, losses=[{"name": "at", "params": {"student_layer": "features", "teacher_layer": "features"}}])
    with pytest.raises(ConfigError, match="but there is the teacher cache, which stores outputs only"):
        check_taps(cached, (1, 8, 8), 5)
    onnx_path = onnx_conv(tmp_path / "t.onnx", classes=5)
    per_teacher = dict(teachers=[{"path": str(onnx_path)}], teacher_mix="losses", losses=[{"name": "kd"}])
    check_taps(_recipe(**per_teacher), (1, 8, 8), 5)
    check_taps(_recipe(**{**per_teacher, "teachers": []}, cache=True), (1, 8, 8), 5)  # one teacher: nothing to mix
    with pytest.raises(ConfigError, match=r"distill.teacher_mix: 'losses' needs each teacher's own outputs, but the teacher cache"):
        check_taps(_recipe(**per_teacher, cache=True), (1, 8, 8), 5)


def test_teacher_does_not_run_when_no_term_reads_it(tmp_path):
    calls = []

    def counted(x):
        calls.append(len(x))
        return torch.zeros(len(x), 5)

    terms = _terms(("ce", {}), ("self_distill", {"student_layer": "features.2"}))
    fit(_cnn(), _data(), FitConfig(**CFG), terms, tmp_path / "a", teacher=counted)
    assert calls == []
    fit(_cnn(), _data(), FitConfig(**CFG), _terms(("kd", {})), tmp_path / "b", teacher=counted)
    assert sum(calls) == 2 + 96  # the dry run and one epoch


class _Recorder(torch.nn.Module):
    """Wraps a model and keeps the batches it was given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.model(x)


def test_augment_gives_teacher_and_student_the_same_view(tmp_path):
    train = _data(64)
    student, teacher = _Recorder(_cnn(4, 2)), _Recorder(_cnn(8, 2, seed=1))
    fit(student, train, FitConfig(**{**CFG, "augment": True}), _terms(("kd", {})), tmp_path, teacher=teacher)
    train_batches = student.seen[1:]  # the first call is the dry run that reads the taps' shapes
    assert len(train_batches) == 2 and len(teacher.seen[1:]) == 2
    for s, t in zip(train_batches, teacher.seen[1:]):
        assert torch.equal(s, t)  # consistent teaching: one augmented view for both
    originals = torch.from_numpy(train.x)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(train_batches[0], originals[order[:32]])  # and the view is not the raw batch


def test_augment_with_the_cache_is_refused(tmp_path):
    train = _data(32)
    cache = build_cache(TorchTeacher(_cnn(8, 2, seed=1)), train.x, key="k", temperature=4.0, k=2)
    with pytest.raises(ConfigError, match="the teacher cache is refused"):
        fit(_cnn(), train, FitConfig(**{**CFG, "augment": True}), _terms(("kd", {})), tmp_path, teacher_cache=cache)


def test_dry_run_follows_the_model_to_its_device():
    """A teacher left on a GPU by an earlier fit() is dry-run there (the meta device stands in for the GPU)."""
    from edgedistill.distill.taps import dry_run_shapes

    teacher = _cnn(8, 2, seed=1).to("meta")
    shapes = dry_run_shapes(teacher, ["features.2"], torch.zeros(2, 1, 8, 8))
    assert shapes["logits"] == torch.Size([2, 5]) and shapes["features.2"][:2] == torch.Size([2, 8])


def test_recipe_python_teacher_is_a_black_box(tmp_path):
    from edgedistill.distill.stage import distill
    from edgedistill.distill.teachers import recipe_teacher
    from py_teacher import logits

    main = _cnn(8, 2, seed=1)
    cfg = _recipe(teacher_weight=0.0, teachers=[{"kind": "python", "path": "py_teacher:logits"}]).distill
    teacher = recipe_teacher(cfg, main, (1, 8, 8), 5)
    assert isinstance(teacher, CallableTeacher)
    x = torch.from_numpy(_data(8).x)
    torch.testing.assert_close(teacher(x)["logits"], logits(x))
    meta = distill(_cnn(), main, _splits(), _recipe(teacher_weight=0.0, losses=[{"name": "kd"}],
                   teachers=[{"kind": "python", "path": "py_teacher:logits"}]), tmp_path / "a")
    assert meta["final"]["loss_total"] > 0
    with pytest.raises(ConfigError, match=r"distill.teachers\[0\].path: 'py_teacher' has no callable 'nope'"):
        recipe_teacher(_recipe(teachers=[{"kind": "python", "path": "py_teacher:nope"}]).distill, main, (1, 8, 8), 5)
    hint = [{"name": "kd"}, {"name": "hint", "params": {"student_layer": "features.2", "teacher_layer": "features.2"}}]
    with pytest.raises(ConfigError, match="a Python callable teacher, which supplies outputs only"):
        distill(_cnn(), main, _splits(), _recipe(teacher_weight=0.0, losses=hint,
                teachers=[{"kind": "python", "path": "py_teacher:logits"}]), tmp_path / "b")
