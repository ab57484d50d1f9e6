"""Fit to budget (student.size = "fit"): the search on tiny models, with a fake timer so no test depends on this
machine's speed; the stage through the pipeline, the report, --refit, and a budget no candidate meets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from _cli import edgedistill

from edgedistill import sizing
from edgedistill.errors import ConfigError
from edgedistill.models import build_model, count_params
from edgedistill.models.cnn import cnn
from edgedistill.targets import Budgets, Target

FAMILY = "fit-test-cnn"  # a user's family with its own (small) search space, registered like any other


@pytest.fixture(autouse=True)
def _family(monkeypatch):
    """``MODELS.register(FAMILY, space=...)(cnn)`` for the test only: the registry is global, and the other test
    modules check that it holds the built-in families alone."""
    from edgedistill.models import MODELS

    monkeypatch.setitem(MODELS._items, FAMILY, cnn)
    monkeypatch.setitem(MODELS._meta, FAMILY, {"space": {"width": [2, 4, 8, 16], "depth": [1, 2]}})

SHAPE, CLASSES = (1, 8, 8), 10
ONE = np.zeros((1, *SHAPE), dtype=np.float32)


def _build(params):
    return build_model(FAMILY, params, SHAPE, CLASSES, "student")


def _fake_files():
    """build / export / quantize whose files carry the model's MACs and parameters, and a fake timer reading them:
    p90 = 1 ms per 10 000 MACs (INT8: 0.8 of that), size = 4 bytes a parameter (INT8: 1), RSS 50 MB."""
    measured: list[list[str]] = []

    def export(model, path):
        Path(path).write_text(json.dumps({"macs": sizing.count_macs(model, ONE), "parameters": count_params(model)}))

    def quantize(fp32, int8):
        Path(int8).write_text(json.dumps({**json.loads(Path(fp32).read_text()), "int8": True}))

    def measure(paths):
        files = [json.loads(Path(p).read_text()) for p in paths]
        measured.append(files)
        models = []
        for p, f in zip(paths, files):
            scale = 0.8 if f.get("int8") else 1.0
            models.append({"path": p, "size_mb": f["parameters"] * (1 if f.get("int8") else 4) / 1e6,
                           "latency_ms": {"p90": scale * f["macs"] / 1e4}, "peak_rss_mb": 50.0})
        return {"models": models, "machine": {"cpu": "fake"}}

    return export, quantize, measure, measured


def _target(**budgets) -> Target:
    return Target(name="fake", budgets=Budgets(**{"size_mb": 20.0, **budgets}))


def _expected(p90_ms: float, margin: float, widths=(2, 4, 8, 16), depths=(1, 2)) -> dict:
    """Brute force over every combination: the most MACs (then parameters) whose INT8 fake p90 fits."""
    best = None
    for width in widths:
        for depth in depths:
            m = _build({"width": width, "depth": depth})
            key = (sizing.count_macs(m, ONE), count_params(m))
            if 0.8 * key[0] / 1e4 <= p90_ms * (1 - margin) and (best is None or key > best[0]):
                best = (key, {"width": width, "depth": depth})
    return best[1]


@pytest.mark.parametrize("p90_ms", [0.5, 2.0, 8.0])
@pytest.mark.parametrize("per_round", [2, 8])
def test_the_search_picks_the_most_capable_candidate_within_the_budget(tmp_path, p90_ms, per_round):
    export, quantize, measure, measured = _fake_files()
    result = sizing.fit_student(FAMILY, {}, _build, export, quantize, ONE, _target(p90_ms=p90_ms), 0.1,
                                work_dir=tmp_path, measure=measure, per_round=per_round, rounds=4)
    assert result["chosen"]["knobs"] == _expected(p90_ms, 0.1)
    assert result["chosen"]["precision"] == "int8"  # the FP32 file is slower under the fake timer
    rows = result["candidates"]
    assert len(rows) == 8 and [r["macs"] for r in rows] == sorted((r["macs"] for r in rows), reverse=True)
    for r in rows:
        assert r["status"] in ("measured", "not measured", "dominated"), r
        if r["status"] == "measured":
            assert set(r["models"]) == {"fp32", "int8"} and r["within_budget"] == (not r["models"][r["precision"]]["misses"])
            assert {"size_mb", "p90_ms", "peak_rss_mb"} <= set(r)
    assert all(len(files) <= 2 * per_round for files in measured)  # each round benchmarks its files together
    chosen_at = next(i for i, r in enumerate(rows) if r["knobs"] == result["chosen"]["knobs"])
    # nothing more capable was left unmeasured, but for those at least as large in every knob as a measured miss
    assert all(r["status"] in ("measured", "dominated") for r in rows[:chosen_at])
    for r in rows[:chosen_at]:
        if r["status"] == "dominated":
            assert "which misses a budget" in r["reason"] and r["within_budget"] is False
    if per_round == 2 and chosen_at < 4:  # spread rounds leave some smaller candidates unmeasured
        assert result["measured"] < 8
    if chosen_at + 1 < len(rows):  # the next one down is measured: what --refit would train
        assert rows[chosen_at + 1]["status"] == "measured"


def test_a_candidate_as_large_in_every_knob_as_a_miss_is_not_measured(tmp_path, monkeypatch):
    from edgedistill.models import MODELS

    widths, depths = (2, 4, 8, 16, 32), (1, 2, 3)
    monkeypatch.setitem(MODELS._meta, FAMILY, {"space": {"width": list(widths), "depth": list(depths)}})
    export, quantize, measure, measured = _fake_files()
    result = sizing.fit_student(FAMILY, {}, _build, export, quantize, ONE, _target(p90_ms=0.2), 0.0,
                                work_dir=tmp_path, measure=measure, per_round=2, rounds=6)
    rows = result["candidates"]
    dominated = [r for r in rows if r["status"] == "dominated"]
    assert dominated, [r["status"] for r in rows]
    seen = {f["parameters"] for files in measured for f in files}
    for r in dominated:  # never benchmarked, and the reason names a measured miss it is as large as in every knob
        misses = [sizing.knob_text(m["knobs"]) for m in rows if m["status"] == "measured" and not m["within_budget"]
                  and all(r["knobs"][k] >= m["knobs"][k] for k in m["knobs"])]
        assert r["parameters"] not in seen and any(f"as {m}, which misses" in r["reason"] for m in misses)
    assert result["chosen"]["knobs"] == _expected(0.2, 0.0, widths, depths)


def test_the_margin_keeps_the_chosen_candidate_off_the_budget_line(tmp_path):
    export, quantize, measure, _ = _fake_files()
    exact = sizing.fit_student(FAMILY, {}, _build, export, quantize, ONE, _target(p90_ms=2.0), 0.0,
                               work_dir=tmp_path, measure=measure)
    chosen = exact["chosen"]["knobs"]
    p90 = next(r for r in exact["candidates"] if r["knobs"] == chosen)["p90_ms"]
    tight = sizing.fit_student(FAMILY, {}, _build, export, quantize, ONE, _target(p90_ms=p90), 0.2,
                               work_dir=tmp_path, measure=measure)
    assert tight["chosen"]["knobs"] != chosen
    assert next(r for r in tight["candidates"] if r["knobs"] == tight["chosen"]["knobs"])["p90_ms"] <= 0.8 * p90


def test_the_size_budget_rules_candidates_out_before_measuring(tmp_path):
    export, quantize, measure, measured = _fake_files()
    biggest = max(count_params(_build({"width": w, "depth": d})) for w in (2, 4, 8, 16) for d in (1, 2))
    result = sizing.fit_student(FAMILY, {}, _build, export, quantize, ONE, _target(size_mb=biggest / 2e6), 0.0,
                                work_dir=tmp_path, measure=measure)
    out = [r for r in result["candidates"] if r["status"] == "too large"]
    assert out and all("parameters need at least" in r["reason"] for r in out)
    assert not {f["parameters"] for files in measured for f in files} & {r["parameters"] for r in out}


def test_a_candidate_that_fails_to_export_is_skipped_with_its_reason(tmp_path):
    export, quantize, measure, _ = _fake_files()

    def flaky(model, path):
        if model.head.in_features == 32:  # width 16, depth 2
            raise RuntimeError("unsupported operator aten::fake\nsecond line")
        export(model, path)

    result = sizing.fit_student(FAMILY, {}, _build, flaky, quantize, ONE, _target(p90_ms=100.0), 0.0,
                                work_dir=tmp_path, measure=measure)
    failed = [r for r in result["candidates"] if r["status"] == "export failed"]
    assert [r["knobs"] for r in failed] == [{"width": 16, "depth": 2}]
    assert failed[0]["reason"] == "unsupported operator aten::fake"
    assert result["chosen"]["knobs"] != {"width": 16, "depth": 2}


def test_a_budget_no_candidate_meets_names_the_budget_and_the_closest_miss(tmp_path):
    export, quantize, measure, _ = _fake_files()
    with pytest.raises(sizing.BudgetError, match=r"^budgets\.p90_ms: no fit-test-cnn candidate meets 0\.001 ms less "
                                                 r"the 10 % margin; the closest, width=2, depth=1 \(INT8\), measures "
                                                 r"[0-9.]+ ms, [0-9]+ % over"):
        sizing.fit_student(FAMILY, {}, _build, export, quantize, ONE, _target(p90_ms=0.001), 0.1,
                           work_dir=tmp_path, measure=measure)
    assert sizing.BudgetError.exit_code == 3


def test_a_family_without_a_search_space_is_refused_with_how_to_declare_one():
    with pytest.raises(ConfigError, match=r"student family 'efficientnet-lite0' declares no search space.*"
                                          r"MODELS\.register\('efficientnet-lite0', space="):
        sizing.search_space("efficientnet-lite0", {})
    with pytest.raises(ConfigError, match=r"student family 'factory' declares no search space.*give your factory "
                                          r"function a `space` attribute"):
        sizing.search_space("factory", {"factory": "test_sizing:_build"})
    assert sizing.search_space("cnn", {})["width"]  # the built-in families declare theirs


def tiny_factory(input_shape, num_classes: int, width: int = 4):
    return cnn(input_shape, num_classes, width=width, depth=1)


tiny_factory.space = {"width": [2, 4, 8]}


def test_a_users_factory_takes_part_through_its_space_attribute():
    base = {"factory": "test_sizing:tiny_factory", "kwargs": {"width": 4}}
    space = sizing.search_space("factory", base)
    assert space == {"kwargs.width": [2, 4, 8]}
    rows = sizing.candidates(base, space,
                             lambda p: build_model("factory", p, SHAPE, CLASSES, "student"), ONE)
    assert [r["params"] for r in rows] == [{"factory": base["factory"], "kwargs": {"width": w}} for w in (8, 4, 2)]
    assert base["kwargs"] == {"width": 4}  # the recipe's own table is left as it was


def test_count_macs_of_a_known_network():
    from torch import nn

    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    assert sizing.count_macs(model, ONE) == 4 * 8 * 8 * 9 + 256 * 10


# --- through the pipeline ----------------------------------------------------------------------------------

def _fit_recipe(tmp_path, p90_ms: float) -> Path:
    from conftest import TINY_RECIPE

    target = tmp_path / "target.toml"
    target.write_text(f'name = "fit-target"\nthreads = 1\n[budgets]\nsize_mb = 20.0\np90_ms = {p90_ms}\n')
    text = TINY_RECIPE.replace('target = "laptop-x86"', f'target = "{target}"').replace(
        'arch = "cnn"\nparams = { width = 4, depth = 1 }',
        f'arch = "{FAMILY}"\nparams = {{ width = 4, depth = 1 }}\nsize = "fit"\nfit_margin = 0.1')
    path = tmp_path / "fit.toml"
    path.write_text(text)
    return path


@pytest.fixture
def file_size_timer(monkeypatch):
    """The size stage's benchmark replaced by a fake timer: p90 = 1 ms per 4 KB of the real file (the bench
    stage itself is untouched)."""
    def fake(target, **settings):
        def measure(paths):
            return {"models": [{"path": p, "size_mb": Path(p).stat().st_size / 1e6,
                                "latency_ms": {"p90": Path(p).stat().st_size / 4000}, "peak_rss_mb": 40.0}
                               for p in paths], "machine": {"cpu": "fake"}, "host_matches_target": False}
        return measure

    monkeypatch.setattr(sizing, "_bench_measure", fake)


def test_fit_runs_through_the_pipeline_reports_and_refits(tmp_path, file_size_timer):
    recipe = _fit_recipe(tmp_path, p90_ms=3.0)
    run_dir = tmp_path / "run"
    first = edgedistill("run", recipe, "--run-dir", run_dir, "--json")
    assert first.returncode in (0, 3), first.stderr
    report = json.loads(first.stdout)
    s = report["sizing"]
    fits = [c for c in s["candidates"] if c.get("within_budget")]
    assert fits and all(c["p90_ms"] <= 3.0 * 0.9 for c in fits)
    assert s["trained"]["knobs"] == s["chosen"]["knobs"] == fits[0]["knobs"]
    assert all(c["macs"] < fits[0]["macs"] or not c.get("within_budget") for c in s["candidates"] if c is not fits[0])
    meta = json.loads((run_dir / "02_student" / "meta.json").read_text())
    assert meta["params"] == s["chosen"]["params"]
    html = (run_dir / "report" / "report.html").read_text()
    assert "<h2>Sizing</h2>" in html and 'alt="sizing"' in html and (run_dir / "report" / "sizing.png").exists()
    assert "## Sizing" in (run_dir / "report" / "report.md").read_text()
    assert s["next_down"] is not None

    again = edgedistill("run", recipe, "--run-dir", run_dir, "--refit")
    assert again.returncode in (0, 3), again.stderr
    assert "[size] unchanged, skipped" in again.stderr and "[student] running" in again.stderr
    meta = json.loads((run_dir / "02_student" / "meta.json").read_text())
    assert meta["params"] == s["next_down"]["params"]
    refit = json.loads((run_dir / "report" / "report.json").read_text())["sizing"]
    assert refit["refit_steps"] == 1 and refit["trained"]["knobs"] == s["next_down"]["knobs"]


def test_a_budget_no_candidate_meets_exits_3_before_any_training(tmp_path, file_size_timer):
    run_dir = tmp_path / "run"
    res = edgedistill("run", _fit_recipe(tmp_path, p90_ms=0.0001), "--run-dir", run_dir)
    assert res.returncode == 3, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert re.match(r"Error: budgets\.p90_ms: no fit-test-cnn candidate meets 0\.0001 ms less the 10 % margin; the "
                    r"closest, width=2, depth=1 \((INT8|FP32)\), measures [0-9.]+ ms, [0-9]+ % over; raise", last), last
    assert "Traceback" not in res.stderr
    assert not (run_dir / "01_teacher" / "model.pt").exists()


def test_refit_without_a_sized_run_says_what_to_do(tmp_path, tiny_recipe_path):
    res = edgedistill("run", tiny_recipe_path, "--run-dir", tmp_path / "run", "--refit")
    assert res.returncode == 1
    assert "--refit" in res.stderr and 'student.size = "fit"' in res.stderr
