
import pytest
import torch
import torch.nn.functional as F

from edgedistill.distill.losses import DistillLoss, LossContext, build_loss
from edgedistill.distill.taps import Taps, check_paths
from edgedistill.distill.train import FitConfig, Term, fit
from edgedistill.errors import ConfigError, StageError
from edgedistill.models import build_model


def _models():
    torch.manual_seed(0)
    s = build_model("cnn", {"width": 4, "depth": 1}, (1, 8, 8), 10, "s")
    t = build_model("cnn", {"width": 8, "depth": 1}, (1, 8, 8), 10, "t")
    return s, t


def _kd(alpha=0.5, T=2.0):
    return build_loss("kd", {}, LossContext(alpha=alpha, temperature=T), "k")


def test_kd_matches_the_formula():
    torch.manual_seed(1)
    s, t, y = torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    got = _kd(0.3, 3.0)({"logits": s}, {"logits": t}, y)
    p_t = F.softmax(t / 3, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / 3, 1))).sum(1).mean()
    want = 0.3 * F.cross_entropy(s, y) + 0.7 * 9.0 * kl
    assert torch.allclose(got, want, atol=1e-6)


def test_kd_drops_hard_term_for_unlabelled():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    unl = _kd(0.9, 2.0)({"logits": s}, {"logits": t}, torch.tensor([-1, -1, -1]))
    soft_only = _kd(0.0, 2.0)({"logits": s}, {"logits": t}, None)
    assert torch.allclose(unl, soft_only)


def test_teacher_is_frozen_and_student_learns(tmp_path, digits_splits):
    s, t = _models()
    t_before = {k: v.clone() for k, v in t.state_dict().items()}
    s_before = s.head.weight.detach().clone()
    cfg = FitConfig(epochs=1, lr=1e-2, batch_size=64)
    fit(s, digits_splits.train, cfg, [Term("kd", _kd())], tmp_path, teacher=t)
    assert all(torch.equal(t_before[k], v) for k, v in t.state_dict().items())
    assert all(p.grad is None for p in t.parameters())
    assert not torch.equal(s_before, s.head.weight)


def test_taps_are_removed_after_use():
    s, _ = _models()
    with Taps(s, ["features.0"]) as taps:
        s(torch.randn(2, 1, 8, 8))
        assert taps.outputs["features.0"].shape == (2, 4, 8, 8)
    assert all(not m._forward_hooks for m in s.modules())


def test_bad_tap_path_lists_valid_names():
    s, _ = _models()
    with pytest.raises(ConfigError, match=r"module path 'layer9' does not exist in the model; valid paths are: features, features\.0"):
        check_paths(s, ["layer9"], "distill.losses[0].params.student_layer")


class _Exploding(DistillLoss):
    """A loss that turns non-finite on the third step, as a diverging run does."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self.calls = 0

    def forward(self, student, teacher, labels):
        self.calls += 1
        scale = float("inf") if self.calls >= 3 else 1.0
        return student["logits"].pow(2).mean() * scale


def test_nan_loss_stops_with_a_message(tmp_path, digits_splits):
    s, t = _models()
    cfg = FitConfig(epochs=1, lr=1e-2, batch_size=64)
    with pytest.raises(StageError, match=r"loss 'boom' became inf at epoch 1, step 3; lower the learning rate"):
        fit(s, digits_splits.train, cfg, [Term("boom", _Exploding(LossContext()))], tmp_path, teacher=t)


def test_a_later_term_that_turns_non_finite_is_named_with_its_step(tmp_path, digits_splits):
    """The terms are checked together (one host sync a step); the message still names the one that failed."""
    s, t = _models()
    cfg = FitConfig(epochs=1, lr=1e-2, batch_size=64)
    with pytest.raises(StageError, match=r"loss 'boom' became inf at epoch 1, step 3; lower the learning rate"):
        fit(s, digits_splits.train, cfg, [Term("kd", _kd()), Term("boom", _Exploding(LossContext()))], tmp_path,
            teacher=t)


def test_the_tally_adds_up_what_each_step_added_as_python_floats():
    """Steps wait on the device and are added in batches (across FOLD_STEPS here): the sums, accuracy counts and
    running loss are exactly those of adding every step as it came."""
    from edgedistill.distill import train as tr

    tally = tr._Tally.start([Term("a", _kd()), Term("b", _kd())], 0, 8, None)
    g = torch.Generator().manual_seed(0)
    sums, correct, count, samples = {"a": 0.0, "b": 0.0, "total": 0.0}, 0, 0, 0
    for step in range(tr.FOLD_STEPS + 5):
        n = 3 + step % 5
        losses = torch.rand(3, generator=g) * 10
        logits, labels = torch.randn(n, 4, generator=g), torch.randint(-1, 4, (n,), generator=g)
        tally.add(losses, logits, labels)
        for k, v in zip(sums, losses):
            sums[k] += float(v) * n
        mask = labels >= 0
        correct, count, samples = correct + int((logits.argmax(1)[mask] == labels[mask]).sum()), count + int(mask.sum()), samples + n
    assert tally.running_loss() == sums["total"] / samples
    assert tally.state() == {"sums": sums, "correct": correct, "count": count}


def test_a_checkpoint_that_cannot_be_put_in_place_fails_the_fit(tmp_path, digits_splits, monkeypatch):
    """Files are committed (fsync, rename) in the background; a failure still reaches the caller."""
    import edgedistill._io

    def refuse(src, dst):
        raise OSError("disk gone")

    s, t = _models()
    monkeypatch.setattr(edgedistill._io.os, "replace", refuse)
    with pytest.raises(OSError, match="disk gone"):
        fit(s, digits_splits.train, FitConfig(epochs=1, lr=1e-2, batch_size=256), [Term("kd", _kd())], tmp_path,
            teacher=t)
    assert not list(tmp_path.rglob("*.tmp"))


def test_resume_from_mid_epoch_checkpoint_is_bit_identical(tmp_path, digits_splits):
    train = digits_splits.train
    cfg = FitConfig(epochs=2, lr=1e-2, batch_size=64, checkpoint_every=5)
    s_ref, t = _models()
    fit(s_ref, train, cfg, [Term("kd", _kd())], tmp_path / "ref", teacher=t)

    # An interrupted run: an exception a few steps after the epoch-2 mid-epoch checkpoint (step 5).
    s_b, _ = _models()
    crash = tmp_path / "crash"

    class Stop(Exception):
        pass

    calls = {"n": 0}
    orig = torch.optim.AdamW.step

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > (len(train) + 63) // 64 + 7:  # a few steps past the epoch-2 checkpoint at step 5
            raise Stop()
        return orig(self, *a, **k)

    torch.optim.AdamW.step = step
    try:
        with pytest.raises(Stop):
            fit(s_b, train, cfg, [Term("kd", _kd())], crash, teacher=t)
    finally:
        torch.optim.AdamW.step = orig
    s_c, _ = _models()
    result = fit(s_c, train, cfg, [Term("kd", _kd())], crash, teacher=t)
    assert result.resumed_from == {"epoch": 1, "step": 5}
    for (k, a), (_, b) in zip(s_ref.state_dict().items(), s_c.state_dict().items()):
        assert torch.equal(a, b), k


def test_without_a_terminal_training_prints_progress_lines(tmp_path, digits_splits, capsys, monkeypatch):
    """Output to a log file gets a line at a steady interval (here every step: interval 0), no bar."""
    import re

    monkeypatch.setenv("EDGEDISTILL_PROGRESS_SECONDS", "0")
    s, t = _models()
    fit(s, digits_splits.train, FitConfig(epochs=2, lr=1e-2, batch_size=256, desc="distill"), [Term("kd", _kd())],
        tmp_path, teacher=t)
    lines = capsys.readouterr().err.strip().splitlines()
    steps = -(-len(digits_splits.train) // 256)
    pattern = re.compile(r"distill epoch (\d)/2 step (\d+)/(\d+) loss \d+\.\d{4} [\d,]+ samples/s ETA \d+m\d\ds")
    got = [pattern.fullmatch(line) for line in lines]
    assert all(got) and len(got) == 2 * steps, lines
    assert [(int(m[1]), int(m[2])) for m in got] == [(e, k) for e in (1, 2) for k in range(1, steps + 1)]
    assert got[-1][0].endswith("ETA 0m00s")


def test_fit_config_from_a_recipe_section():
    from edgedistill.quant.config import QATConfig
    from edgedistill.recipe import recipe_from_dict

    recipe = recipe_from_dict({"distill": {"epochs": 4, "lr": 0.01, "optimizer": "sgd", "scheduler": "linear",
                                           "device": "cpu", "amp": "bf16", "accumulate": 2, "checkpoint_every": 7,
                                           "augment": True,
                                           "warmup": 0.1, "clip_grad_norm": 1.5}})
    cfg = FitConfig.from_section(recipe.distill, desc="distill", batch_size=32, seed=3, workers=0)
    assert cfg == FitConfig(epochs=4, lr=0.01, weight_decay=recipe.distill.weight_decay, optimizer="sgd",
                            scheduler="linear", batch_size=32, seed=3, device="cpu", amp="bf16", accumulate=2,
                            checkpoint_every=7,
                            desc="distill", augment=True, workers=0, warmup=0.1, clip_grad_norm=1.5)
    # What a section lacks (or the caller decides) is passed: [teacher] has no device, [qat] no optimiser.
    teacher = FitConfig.from_section(recipe.teacher, desc="teacher", batch_size=32, seed=3, workers=None, epochs=2,
                                     device="cpu")
    assert (teacher.epochs, teacher.lr, teacher.device, teacher.amp) == (2, recipe.teacher.lr, "cpu", "off")
    qat = FitConfig.from_section(QATConfig(lr=1e-4), desc="qat-observe", batch_size=8, seed=0, workers=None, epochs=1)
    assert (qat.epochs, qat.lr, qat.optimizer, qat.scheduler) == (1, 1e-4, "adamw", "cosine")
    with pytest.raises(TypeError):
        FitConfig.from_section(recipe.distill, desc="x", batch_size=1, seed=0, workers=None, nonsense=1)


def test_bf16_autocast_trains_on_the_cpu_close_to_fp32(tmp_path, digits_splits):
    from edgedistill.distill.train import evaluate_accuracy

    accs = {}
    for amp in ("off", "bf16"):
        torch.manual_seed(0)
        s = build_model("mlp", {"hidden": [32]}, digits_splits.input_shape, 10, "s")
        cfg = FitConfig(epochs=3, lr=1e-2, batch_size=64, amp=amp, seed=0)
        ce = build_loss("ce", {}, LossContext(num_classes=10), "c")
        result = fit(s, digits_splits.train, cfg, [Term("ce", ce)], tmp_path / amp)
        assert all(r["loss_total"] == r["loss_total"] for r in result.history)  # finite, not NaN
        assert all(p.dtype == torch.float32 for p in s.parameters())  # autocast keeps fp32 master weights
        accs[amp] = evaluate_accuracy(s, digits_splits.test)
    # bf16 rounds activations to 8 mantissa bits: the same training, not the same digits (measured: 0.0 to 2 points)
    assert accs["bf16"] > 0.5 and abs(accs["bf16"] - accs["off"]) < 0.05, accs


def test_fp16_on_the_cpu_is_refused_in_one_sentence(tmp_path, digits_splits):
    s, t = _models()
    with pytest.raises(ConfigError, match=r"distill.amp: 'fp16' needs a CUDA device .* use 'bf16' on the CPU"):
        fit(s, digits_splits.train, FitConfig(epochs=1, lr=1e-2, amp="fp16", device="cpu"), [Term("kd", _kd())], tmp_path,
            teacher=t)
