"""Ctrl-C handling in one process: the first SIGINT is deferred to a clean point, the second stops at
once, and a terminal's Ctrl-C (sent to the whole process group) does not kill bench workers in the
middle of a stage. The real-run Ctrl-C test is in tests/test_resume.py."""

import os
import signal
import time

import pytest

from edgedistill import _signals, bench
from tests import onnx_models


def _wait_for(cond, seconds=5.0):
    end = time.monotonic() + seconds
    while not cond() and time.monotonic() < end:
        time.sleep(0.001)
    return cond()


def test_first_ctrl_c_is_deferred_and_the_second_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    said = []
    with pytest.raises(KeyboardInterrupt):
        with _signals.graceful_sigint(said.append):
            assert not _signals.stop_requested()
            os.kill(os.getpid(), signal.SIGINT)
            assert _wait_for(_signals.stop_requested)  # no KeyboardInterrupt: only a request
            assert said == ["Ctrl-C: stopping at the next clean point (after this training step or stage); "
                            "press Ctrl-C again to stop at once."]
            os.kill(os.getpid(), signal.SIGINT)
            _wait_for(lambda: False, 5.0)  # the second one raises here
    assert signal.getsignal(signal.SIGINT) is before and not _signals.stop_requested()


def test_bench_workers_are_out_of_reach_of_a_terminals_ctrl_c(tmp_path, monkeypatch):
    """A terminal sends Ctrl-C to its foreground process group; a worker in it died mid-bench (exit 1,
    "the benchmark worker died (KeyboardInterrupt)") instead of letting the run stop after the stage."""
    groups = []
    real_popen = bench.subprocess.Popen

    def spy(*a, **k):
        proc = real_popen(*a, **k)
        groups.append(os.getpgid(proc.pid))
        return proc

    monkeypatch.setattr(bench.subprocess, "Popen", spy)
    model = str(onnx_models.mlp(tmp_path / "mlp.onnx"))
    bench.benchmark([model], runs=1, warmup=0, min_seconds=0.0)
    assert groups and os.getpgid(0) not in groups
