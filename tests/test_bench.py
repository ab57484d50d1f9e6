import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_models
from _light import light_env
from edgedistill import bench
from edgedistill._machine import architecture, cpu_count
from edgedistill.errors import DataError
from edgedistill.targets import load_target

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]
FAST = dict(runs=20, warmup=2, min_seconds=0.05)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    return {"mlp": str(onnx_models.mlp(d / "mlp.onnx")), "conv": str(onnx_models.conv(d / "conv.onnx")),
            "tok": str(onnx_models.token_model(d / "tok.onnx"))}


def _target_file(tmp_path, **over):
    t = {"name": "t", "architecture": architecture(), "cores": cpu_count(), "threads": 1,
         "budgets": {"size_mb": 1.0, "p90_ms": 1000.0, "peak_ram_mb": 4096.0}}
    budgets = over.pop("budgets", {})
    t.update(over)
    t["budgets"].update(budgets)
    lines = [f"{k} = {json.dumps(v)}" for k, v in t.items() if k != "budgets"]
    lines.append("[budgets]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in t["budgets"].items()]
    p = tmp_path / "t.toml"
    p.write_text("\n".join(lines) + "\n")
    return load_target(str(p))


def test_import_leaves_torch_unloaded():
    code = ("import sys, edgedistill.bench, edgedistill._machine, edgedistill.onnx_inspect, edgedistill.bundle, "
            "edgedistill.cli_runtime; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.strip() == "False"


def test_bench_and_inspect_cli_run_on_a_board_without_torch(models, tmp_path):
    env = light_env(tmp_path / "site")  # torch cannot be found, as on a Raspberry Pi with the light install
    out = subprocess.run([sys.executable, "-m", "edgedistill", "bench", models["conv"], "--runs", "5",
                          "--min-seconds", "0", "--json"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["models"][0]["runs"] >= 5
    out = subprocess.run([sys.executable, "-m", "edgedistill", "inspect", models["conv"], "--json"], cwd=tmp_path,
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["params"] == 65


def test_output_contract_two_models(models):
    r = bench.benchmark([models["mlp"], models["conv"]], **FAST)
    assert {"cpu", "cores", "isa", "onnxruntime"} <= set(r["machine"])
    assert r["machine"]["onnxruntime"] == ort.__version__
    assert {"avx2", "avx512_vnni", "arm_dotprod"} <= set(r["machine"]["isa"])
    assert [m["path"] for m in r["models"]] == [models["mlp"], models["conv"]]
    for m in r["models"]:
        assert {"path", "size_mb", "session_create_ms", "first_inference_ms", "latency_ms",
                "throughput_per_s", "peak_rss_mb"} <= set(m)
        lat = m["latency_ms"]
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert lat["min"] > 0 and lat["std"] >= 0
        assert m["runs"] >= FAST["runs"] and m["steady_seconds"] >= FAST["min_seconds"]
        assert m["size_mb"] == pytest.approx(Path(m["path"]).stat().st_size / 1e6, abs=1e-4)
        assert m["throughput_per_s"] == pytest.approx(1000 / lat["mean"])
        assert m["peak_rss_mb"] > 0
    (ratio,) = r["ratios"]
    assert ratio["model"] == models["conv"] and ratio["baseline"] == models["mlp"]
    assert ratio["latency_p90"] == pytest.approx(
        r["models"][1]["latency_ms"]["p90"] / r["models"][0]["latency_ms"]["p90"], rel=1e-3)
    assert "verdict" not in r and "target" not in r
    json.dumps(r)  # the CLI prints it as JSON


def test_latency_stats_match_fixture():
    fx = json.loads((FIXTURES / "latency_stats.json").read_text())
    got = bench.latency_stats(fx["samples_ms"])
    for k, v in fx["expected"].items():
        assert got[k] == pytest.approx(v), k


class _FakeWorker:
    def __init__(self, name, log, ms):
        self.path, self.log, self.ms = name, log, ms
        self.init = {"session_create_ms": 1.0, "first_inference_ms": ms, "rss_before_session_mb": 1.0,
                     "provider": "CPUExecutionProvider", "inputs": [], "session_config": {}}

    def ask(self, msg):
        self.log.append((self.path, msg["cmd"], msg.get("n")))
        if msg["cmd"] == "warmup":
            return {"mean_ms": self.ms}
        if msg["cmd"] == "run":
            return {"ms": [self.ms] * msg["n"]}
        return {"peak_rss_mb": 2.0}


def test_models_are_interleaved_in_blocks(monkeypatch):
    monkeypatch.setattr(bench, "file_size_mb", lambda p: 1.0)
    log = []
    workers = [_FakeWorker("A", log, 1.0), _FakeWorker("B", log, 4.0)]
    s = dict(runs=50, warmup=3, min_seconds=0.2, batch_size=1)
    out = bench._measure(workers, s)
    runs = [(name, n) for name, cmd, n in log if cmd == "run"]
    assert [name for name, _ in runs] == ["A", "B"] * (len(runs) // 2)  # A B A B ...
    assert len(runs) >= 4
    # blocks are sized so both models take about the same time per round
    assert dict(runs)["A"] * 1.0 == pytest.approx(dict(runs)["B"] * 4.0, rel=0.25)
    for m in out:
        assert m["runs"] >= 50 and m["steady_seconds"] >= 0.2
    assert log[0][1] == "warmup" and log[-1][1] == "stop"


def test_random_inputs_follow_signature(models):
    sess = ort.InferenceSession(models["tok"], providers=["CPUExecutionProvider"])
    feeds = bench.random_inputs(sess, batch_size=3, seq_len=7)
    assert feeds["input_ids"].shape == (3, 7) and feeds["input_ids"].dtype == np.int64
    assert feeds["input_ids"].min() >= 0 and feeds["input_ids"].max() < 100
    assert (feeds["attention_mask"] == 1).all()
    (out,) = sess.run(None, feeds)
    assert out.shape == (3, 8) and np.isfinite(out).all()


def test_batch_and_seq_len_reach_the_worker(models):
    r = bench.benchmark([models["tok"]], batch_size=2, seq_len=5, **FAST)
    assert r["models"][0]["inputs"][0] == {"name": "input_ids", "shape": [2, 5], "dtype": "int64"}
    assert r["models"][0]["throughput_per_s"] == pytest.approx(2000 / r["models"][0]["latency_ms"]["mean"])


def test_verdict_and_threads_from_target(models, tmp_path):
    target = _target_file(tmp_path, budgets={"p90_ms": 1e-6})
    r = bench.benchmark([models["mlp"]], target=target, deliverable=models["mlp"], **FAST)
    assert r["settings"]["threads"] == 1
    v = r["verdict"]
    assert r["models"][0]["verdict"] == v  # each model is judged; the deliverable's verdict is the top-level one
    assert v["p90_ms"]["ok"] is False and v["p90_ms"]["limit"] == 1e-6
    assert v["p90_ms"]["measured"] == pytest.approx(r["models"][0]["latency_ms"]["p90"], abs=1e-4)
    assert v["size_mb"]["ok"] is True and v["size_mb"]["margin"] > 0
    assert v["peak_ram_mb"]["ok"] is True
    assert r["ok"] is False
    assert r["host_matches_target"] is True
    assert r["target"]["name"] == "t"


def test_other_host_is_said_plainly_and_explicit_threads_win(models, tmp_path):
    other = "aarch64" if architecture() == "x86_64" else "x86_64"
    target = _target_file(tmp_path, architecture=other, cores=8, threads=4)
    r = bench.benchmark([models["mlp"]], target=target, threads=1, deliverable=models["mlp"], **FAST)
    assert r["settings"]["threads"] == 1
    assert r["host_matches_target"] is False
    assert "not the target" in r["host_note"] and "unscaled" in r["host_note"]
    assert r["ok"] is True


def test_deliverable_picks_the_judged_model(models, tmp_path):
    target = _target_file(tmp_path, budgets={"size_mb": 0.004})  # tok.onnx is bigger, mlp.onnx smaller
    r = bench.benchmark([models["mlp"], models["tok"]], target=target, **FAST)
    assert "deliverable" not in r and "ok" not in r  # none named: every model judged, none singled out
    assert [m["verdict"]["size_mb"]["ok"] for m in r["models"]] == [True, False]
    r = bench.benchmark([models["mlp"], models["tok"]], target=target, deliverable=models["tok"], **FAST)
    assert r["deliverable"] == models["tok"] and r["ok"] is False
    r = bench.benchmark([models["mlp"], models["tok"]], target=target, deliverable=models["mlp"], **FAST)
    assert r["deliverable"] == models["mlp"] and r["ok"] is True
    assert r["models"][1]["verdict"]["size_mb"]["ok"] is False


def test_peak_rss_is_per_model(tmp_path, models):
    big = np.random.default_rng(0).standard_normal((2048, 4096)).astype(np.float32)  # 32 MiB of weights
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2048])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])],
                          [numpy_helper.from_array(big, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "big.onnx"))
    r = bench.benchmark([models["mlp"], str(tmp_path / "big.onnx"), models["conv"]], **FAST)
    small, large, small2 = (m["peak_rss_mb"] for m in r["models"])
    assert large > small + 30 and large > small2 + 30  # big weights stay in big's process


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"nope\.onnx: model file not found; check the path\."):
        bench.benchmark([str(tmp_path / "nope.onnx")])


def test_unreadable_model_is_a_data_error(tmp_path):
    p = tmp_path / "junk.onnx"
    p.write_bytes(b"not an onnx model")
    with pytest.raises(DataError, match=r"junk\.onnx: not a valid ONNX model \(.*\); pass an \.onnx file"):
        bench.benchmark([str(p)], **FAST)


def test_bad_arguments_are_data_errors(models):
    with pytest.raises(DataError, match="no model given"):
        bench.benchmark([])
    with pytest.raises(DataError, match="runs, batch_size and seq_len must be >= 1"):
        bench.benchmark([models["mlp"]], runs=0)
    with pytest.raises(DataError, match="deliverable 'x.onnx' is not one of the benchmarked paths"):
        bench.benchmark([models["mlp"]], deliverable="x.onnx")
    with pytest.raises(DataError, match="providers: NopeExecutionProvider is not in this onnxruntime build"):
        bench.benchmark([models["mlp"]], providers=["NopeExecutionProvider"])


def test_builtin_targets_cover_the_issue():
    from edgedistill.targets import list_targets

    names = {t.name for t in list_targets()}
    assert {"laptop-x86", "raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano", "android-midrange",
            "android-flagship", "iphone"} <= names
    for t in list_targets():
        assert load_target(t.name) == t  # file name and name key agree
        assert t.threads <= t.cores and t.budgets.p90_ms and t.budgets.peak_ram_mb and t.description
    assert load_target("iphone").execution_provider == "CoreMLExecutionProvider"


def test_zero_warmup_and_zero_min_seconds_still_give_runs(models):
    r = bench.benchmark([models["conv"]], runs=5, warmup=0, min_seconds=0.0)
    assert r["models"][0]["runs"] >= 5 and r["models"][0]["warmup_runs"] == 0


def _cli(args):
    from click.testing import CliRunner

    from edgedistill.cli_runtime import bench_cmd

    return CliRunner().invoke(bench_cmd, args)


def test_cli_json_and_exit_code_3_on_missed_budget(models, tmp_path):
    _target_file(tmp_path, budgets={"p90_ms": 1e-6})
    res = _cli([models["mlp"], models["conv"], "--target", str(tmp_path / "t.toml"), "--runs", "20",
                "--min-seconds", "0.05", "--warmup", "2", "--json"])
    assert res.exit_code == 3, res.output
    r = json.loads(res.stdout)
    assert r["verdict"]["p90_ms"]["ok"] is False and len(r["ratios"]) == 1


def test_cli_text_output_within_budget(models, tmp_path):
    _target_file(tmp_path)
    res = _cli([models["mlp"], models["conv"], "--target", str(tmp_path / "t.toml"), "--runs", "20",
                "--min-seconds", "0.05"])
    assert res.exit_code == 0, res.output
    assert "ratio " in res.stdout and "speed-up" in res.stdout
    assert "WITHIN BUDGET" in res.stdout and "p90_ms" in res.stdout


def test_cli_errors_are_one_sentence(tmp_path):
    res = _cli([str(tmp_path / "none.onnx")])
    assert res.exit_code == 1
    assert "none.onnx: model file not found; check the path." in res.output
    res = _cli([str(tmp_path / "none.onnx"), "--target", "no-such-board"])
    assert res.exit_code == 1 and "target 'no-such-board' is unknown" in res.output


def test_size_counts_the_external_data_file(tmp_path):
    src = onnx.load(onnx_models.mlp(tmp_path / "src.onnx", hidden=256))
    onnx.save(src, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)
    total = (tmp_path / "ext.onnx").stat().st_size + (tmp_path / "ext.onnx.data").stat().st_size
    r = bench.benchmark([str(tmp_path / "ext.onnx")], **FAST)
    assert (tmp_path / "ext.onnx.data").stat().st_size > 8 * 256 * 4
    assert r["models"][0]["size_mb"] == pytest.approx(total / 1e6, abs=1e-4)


def test_worker_crash_is_reported_in_one_sentence(models, monkeypatch, tmp_path):
    # a worker that dies at start-up: its last stderr line is quoted and the model named
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'starting' >&2\necho 'Fatal: boom in the worker' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(bench.sys, "executable", str(fake))
    with pytest.raises(bench.EdgeDistillError,
                       match=r"mlp\.onnx: the benchmark worker died \(Fatal: boom in the worker\); check that"):
        bench.benchmark([models["mlp"]], **FAST)


def test_timed_runs_times_each_call():
    import time as _time

    class Slow:
        def __init__(self):
            self.calls = 0

        def run(self, names, feeds):
            self.calls += 1
            _time.sleep(0.02 if self.calls % 2 else 0.001)

    s = Slow()
    ms = bench._timed_runs(s, {}, 6)
    assert s.calls == 6 and len(ms) == 6
    assert all(m >= 20.0 for m in ms[0::2]) and all(m >= 1.0 for m in ms[1::2])
    assert max(ms[1::2]) < min(ms[0::2])  # each call's own time, not a neighbour's


def test_no_worker_is_left_running_when_a_later_model_fails(models, tmp_path, monkeypatch):
    started = []
    real_popen = bench.subprocess.Popen

    def spy(*a, **k):
        started.append(real_popen(*a, **k))
        return started[-1]

    monkeypatch.setattr(bench.subprocess, "Popen", spy)
    junk = tmp_path / "junk.onnx"  # passes onnx.checker (checked before any worker starts), but ORT has no such op
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]), junk)
    with pytest.raises(DataError, match="onnxruntime cannot load it"):
        bench.benchmark([models["mlp"], str(junk)], **FAST)
    assert len(started) == 2 and all(p.poll() is not None for p in started)


def test_a_p90_measured_off_the_target_is_indicative_and_does_not_gate(models, tmp_path):
    other = "aarch64" if architecture() == "x86_64" else "x86_64"
    target = _target_file(tmp_path, architecture=other, budgets={"p90_ms": 1e-6})
    r = bench.benchmark([models["mlp"]], target=target, deliverable=models["mlp"], **FAST)
    assert r["measured_on_target"] is False and r["latency_indicative"] is True
    assert r["verdict"]["p90_ms"]["ok"] is False and r["verdict"]["p90_ms"]["indicative"] is True
    assert r["ok"] is True and "indicative and does not gate" in r["host_note"]
    res = _cli([models["mlp"], "--target", str(tmp_path / "t.toml"), "--runs", "20", "--min-seconds", "0"])
    assert res.exit_code == 0, res.output
    assert "MISSED (indicative)" in res.stdout and "WITHIN BUDGET" in res.stdout
    res = _cli([models["mlp"], "--target", str(tmp_path / "t.toml"), "--runs", "20", "--min-seconds", "0",
                "--gate-indicative", "--json"])
    assert res.exit_code == 3, res.output
    assert json.loads(res.stdout)["latency_indicative"] is False
    target = _target_file(tmp_path, architecture=other, budgets={"p90_ms": 1e-6, "size_mb": 1e-6})
    r = bench.benchmark([models["mlp"]], target=target, deliverable=models["mlp"], **FAST)
    assert r["ok"] is False  # size still gates off the target


def test_threads_above_the_host_cores_are_capped_with_a_note(models, tmp_path):
    r = bench.benchmark([models["mlp"]], threads=cpu_count() + 2, **FAST)
    assert r["settings"]["threads"] == cpu_count() and r["settings"]["threads_requested"] == cpu_count() + 2
    assert f"capped at this host's {cpu_count()} cores" in r["settings"]["threads_note"]
    assert "threads_note" not in bench.benchmark([models["mlp"]], threads=cpu_count(), **FAST)["settings"]


def test_latency_stats_give_a_distribution_free_95_percent_interval():
    ci = bench.latency_stats([float(i) for i in range(1, 101)])["ci95"]
    # ranks n*q -/+ 1.96*sqrt(n*q*(1-q)): p50 50 -/+ 9.8 -> 40..60, p90 90 -/+ 5.88 -> 84..96 (1-based)
    assert ci == {"p50": [40.0, 60.0], "p90": [84.0, 96.0]}
    assert bench.latency_stats([2.0])["ci95"] == {"p50": [2.0, 2.0], "p90": [2.0, 2.0]}


class _NoisyWorker(_FakeWorker):
    def ask(self, msg):
        if msg["cmd"] == "run":
            self.log.append((self.path, "run", msg["n"]))
            return {"ms": list(np.random.default_rng(len(self.log)).uniform(1.0, 3.0, msg["n"]))}
        return super().ask(msg)


def test_rounds_go_on_until_the_intervals_are_tight_or_the_cap(monkeypatch):
    monkeypatch.setattr(bench, "file_size_mb", lambda p: 1.0)
    s = dict(runs=20, warmup=1, min_seconds=0.0, batch_size=1, ci_tolerance=0.05, max_seconds=30.0)
    steady = bench._measure([_FakeWorker("A", [], 1.0)], s)[0]  # no spread: tight at the minimum
    assert steady["runs"] == 20 and steady["ci_tight"] is True
    noisy = bench._measure([_NoisyWorker("B", [], 2.0)], s)[0]  # uniform 1..3 ms: tight after a few hundred runs
    assert noisy["ci_tight"] is True and noisy["runs"] > 100
    lo, hi = noisy["latency_ms"]["ci95"]["p90"]
    assert (hi - lo) / 2 <= 0.05 * noisy["latency_ms"]["p90"]
    capped = bench._measure([_NoisyWorker("C", [], 2.0)], {**s, "ci_tolerance": 0.0001, "max_seconds": 0.2})[0]
    assert capped["ci_tight"] is False  # stopped by the time cap
    off = bench._measure([_NoisyWorker("D", [], 2.0)], {**s, "ci_tolerance": None})[0]
    assert off["runs"] == 20 and "ci_tight" not in off


def test_a_wide_interval_is_noted(models):
    r = bench.benchmark([models["mlp"]], runs=20, warmup=2, min_seconds=0, ci_tolerance=1e-9, max_seconds=0.1)
    assert r["models"][0]["ci_tight"] is False and "wider than +/-1e-07 %" in r["settings"]["ci_note"]
