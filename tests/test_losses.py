"""Every registered loss: expected values on fixed inputs, gradients, refusals, the registry listing."""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edgedistill.distill.losses import LOSSES, LossContext, build_loss
from edgedistill.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_loss_values", FIXTURES / "make_loss_values.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)
EXPECTED = json.loads((FIXTURES / "loss_values.json").read_text())["values"]


def test_every_registered_loss_has_a_fixture_case():
    covered = {name for name, _ in fx.CASES.values()}
    assert covered == set(LOSSES.names())
    assert set(EXPECTED) == set(fx.CASES)


@pytest.mark.parametrize("case", sorted(fx.CASES))
def test_loss_matches_expected_value(case):
    assert fx.compute(case) == pytest.approx(EXPECTED[case], rel=1e-4, abs=1e-6)


def _built(name, params, student, teacher):
    loss = build_loss(name, params, LossContext(num_classes=10, batch_size=16), "t")
    torch.manual_seed(0)
    loss.build({k: v.shape for k, v in student.items()}, {k: v.shape for k, v in teacher.items()})
    return loss


@pytest.mark.parametrize("case", sorted(fx.CASES))
def test_gradient_reaches_student_never_teacher(case):
    name, params = fx.CASES[case]
    student, teacher, labels = fx.inputs(case)
    teacher = {k: v.clone().requires_grad_(True) for k, v in teacher.items()}  # would catch a leak
    loss = _built(name, dict(params), student, teacher)
    loss(student, teacher, labels).backward()
    read = set(loss.student_layers()) or {"logits"}
    assert any(student[k].grad is not None and student[k].grad.abs().sum() > 0 for k in read)
    assert all(v.grad is None for v in teacher.values())


# ---- independent reference formulas (written apart from the implementations) ----

def test_kd_equals_hinton_formula():
    s, t, y = fx.inputs()
    T, a = 4.0, 0.3
    p_t = torch.softmax(t["logits"] / T, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s["logits"] / T, 1))).sum(1).mean()
    ref = a * F.cross_entropy(s["logits"], y) + (1 - a) * T * T * kl
    assert fx.compute("kd") == pytest.approx(ref.item(), rel=1e-5)


def test_dkd_equals_reference_decomposition():
    s, t, y = fx.inputs()
    T, a = 4.0, 0.3
    tckd = nckd = 0.0
    for i in range(16):
        ps, pt = torch.softmax(s["logits"][i] / T, 0), torch.softmax(t["logits"][i] / T, 0)
        g = int(y[i])
        bs, bt = torch.stack([ps[g], 1 - ps[g]]), torch.stack([pt[g], 1 - pt[g]])
        tckd += (bt * (bt / bs).log()).sum().item()
        keep = [c for c in range(10) if c != g]
        qs, qt = ps[keep] / ps[keep].sum(), pt[keep] / pt[keep].sum()
        nckd += (qt * (qt / qs).log()).sum().item()
    ref = a * F.cross_entropy(s["logits"], y).item() + (1 - a) * T * T * (tckd + 8.0 * nckd) / 16
    assert fx.compute("dkd") == pytest.approx(ref, rel=1e-4)


def test_simmat_is_mean_squared_cosine_matrix_difference():
    s, t, _ = fx.inputs()
    cs = F.cosine_similarity(s["s_emb"][:, None], s["s_emb"][None], dim=2)
    ct = F.cosine_similarity(t["t_emb"][:, None], t["t_emb"][None], dim=2)
    ref = torch.linalg.matrix_norm(cs - ct, "fro") ** 2 / 16**2
    assert fx.compute("simmat") == pytest.approx(ref.item(), rel=1e-4)


def test_sp_matches_paper_formula():
    s, t, _ = fx.inputs()
    qs, qt = s["s_map"].flatten(1), t["t_map"].flatten(1)
    gs, gt = qs @ qs.T, qt @ qt.T
    gs, gt = gs / gs.norm(dim=1, keepdim=True), gt / gt.norm(dim=1, keepdim=True)
    ref = ((gs - gt) ** 2).sum() / 16**2
    assert fx.compute("sp") == pytest.approx(ref.item(), rel=1e-4)


def test_attention_transfer_matches_paper_formula():
    s, t, _ = fx.inputs()
    a_s = F.adaptive_avg_pool2d(s["s_map"], 4).pow(2).sum(1).flatten(1)  # student map pooled to teacher's 4x4
    a_t = t["t_map"].pow(2).sum(1).flatten(1)
    a_s, a_t = a_s / a_s.norm(dim=1, keepdim=True), a_t / a_t.norm(dim=1, keepdim=True)
    assert fx.compute("at") == pytest.approx(((a_s - a_t) ** 2).sum(1).mean().item(), rel=1e-4)


def test_rkd_is_invariant_to_scaling_the_student_space():
    s, t, y = fx.inputs()
    loss = _built("rkd", {"student_layer": "s_emb", "teacher_layer": "t_emb"}, s, t)
    a = loss(s, t, y).item()
    s2 = dict(s, s_emb=s["s_emb"] * 7.5)
    assert loss(s2, t, y).item() == pytest.approx(a, rel=1e-4)
    assert loss({"s_emb": t["t_emb"]}, t, y).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["pkt", "simmat", "sp", "nst", "at"])
def test_relation_losses_are_zero_when_student_equals_teacher(name):
    s, t, y = fx.inputs()
    key = "t_map" if name in ("nst", "at", "sp") else "t_emb"
    loss = _built(name, {"student_layer": key, "teacher_layer": key}, t, t)
    assert loss({key: t[key]}, t, y).item() == pytest.approx(0.0, abs=1e-5)


def test_crd_queue_is_bounded_and_first_call_uses_in_batch_negatives():
    s, t, y = fx.inputs()
    loss = _built("crd", {"student_layer": "s_emb", "teacher_layer": "t_emb", "feat_dim": 16, "queue_size": 40}, s, t)
    zs = F.normalize(loss.embed_s(s["s_emb"]), dim=1)
    zt = F.normalize(loss.embed_t(t["t_emb"]), dim=1)
    tgt = torch.arange(16)
    ref = 0.5 * (F.cross_entropy(zs @ zt.T / 0.07, tgt) + F.cross_entropy(zt @ zs.T / 0.07, tgt))
    assert loss(s, t, y).item() == pytest.approx(ref.item(), rel=1e-4)
    for _ in range(5):
        loss(s, t, y)
    assert int(loss.queue_len) == 40 and loss.queue_s.shape == (40, 16)


# ---- behaviour ----

def test_unlabelled_samples_drop_the_hard_term():
    s, t, y = fx.inputs()
    kd = build_loss("kd", {"alpha": 0.5}, LossContext(), "t")
    only_soft = build_loss("kd", {"alpha": 0.0}, LossContext(), "t")
    none = torch.full_like(y, -1)
    assert kd(s, t, none).item() == pytest.approx(only_soft(s, t, None).item(), rel=1e-6)
    dkd = build_loss("dkd", {}, LossContext(), "t")
    assert math.isfinite(dkd(s, t, none).item())


def test_relation_loss_warns_on_small_batch():
    s, t, y = fx.inputs()
    loss = _built("simmat", {"student_layer": "s_emb", "teacher_layer": "t_emb"}, s, t)
    with pytest.warns(UserWarning, match="too small to carry relations"):
        loss({"s_emb": s["s_emb"][:4]}, {"t_emb": t["t_emb"][:4]}, y[:4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss(s, t, y)


def test_unknown_parameter_is_rejected_with_valid_names():
    with pytest.raises(ConfigError, match=r"distill.losses\[0\].params.beta: unknown parameter of loss 'dkd'; valid ones are: alpha"):
        build_loss("dkd", {"beta": 8}, LossContext(), "distill.losses[0]")


def test_mismatched_layer_map_is_rejected():
    with pytest.raises(ConfigError, match="student_layer lists 3 paths but teacher_layer lists 4"):
        build_loss("hidden", {"student_layer": ["a", "b", "c"], "teacher_layer": ["1", "2", "3", "4"]}, LossContext(), "x")


def test_missing_tap_is_reported():
    s, t, y = fx.inputs()
    loss = _built("hint", {"student_layer": "s_map", "teacher_layer": "t_map"}, s, t)
    with pytest.raises(KeyError, match="teacher outputs hold no tap 't_map'"):
        loss(s, {"logits": t["logits"]}, y)


@pytest.mark.parametrize("name", ["embed_cos", "embed_mse", "simmat", "rkd", "pkt", "crd"])
def test_embedding_losses_work_on_any_BD_output(name):
    # A sentence encoder: "logits" is a [B, D] embedding; widths differ (student 24, teacher 48).
    g = torch.Generator().manual_seed(1)
    s = {"logits": torch.randn(32, 24, generator=g, requires_grad=True)}
    t = {"logits": torch.randn(32, 48, generator=g)}
    loss = _built(name, {}, s, t)
    assert not loss.needs_teacher_features
    value = loss(s, t, None)
    value.backward()
    assert math.isfinite(value.item()) and s["logits"].grad is not None


def test_feature_flags():
    ctx = LossContext()
    assert build_loss("hint", {"student_layer": "a", "teacher_layer": "b"}, ctx, "x").needs_teacher_features
    assert build_loss("at", {}, ctx, "x").needs_teacher_features
    assert not build_loss("rkd", {}, ctx, "x").needs_teacher_features
    assert build_loss("rkd", {"teacher_layer": "features"}, ctx, "x").needs_teacher_features


def test_losses_cli_lists_every_loss():
    from click.testing import CliRunner

    from edgedistill.cli import losses_cmd

    out = CliRunner().invoke(losses_cmd, ["--json"])
    assert out.exit_code == 0
    rows = json.loads(out.output)
    assert [r["name"] for r in rows] == LOSSES.names()
    assert all(r["description"] for r in rows)
    text = CliRunner().invoke(losses_cmd, []).output
    assert "dkd" in text and "Decoupled KD" in text


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_documents_formula_and_paper(name):
    doc = LOSSES.get(name).__doc__ or ""
    assert "loss" in doc.lower() or "=" in doc
    if name != "ce":
        assert any(str(y) in doc for y in range(2014, 2024)), f"{name} docstring cites no paper year"
