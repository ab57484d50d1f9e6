"""Helpers for the reliability tests: the real CLI in a subprocess, the "nothing half-written" check,
and the real runs the resume / determinism / Ctrl-C / budget tests share (started together, so
they overlap on the cores)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import TINY_RECIPE

ROOT = Path(__file__).resolve().parents[1]

def _edit(text: str, *changes: tuple[str, str]) -> str:
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


# The tiny recipe with a higher learning rate and a wider teacher (a student that learns something, so
# equal metrics mean something), batch 32 (40 steps per epoch) and a mid-epoch checkpoint every 5 steps.
RESUME_RECIPE = _edit(
    TINY_RECIPE,
    ('name = "tiny"\nseed = 0', 'name = "resume"\nseed = 3'),
    ("batch_size = 64", "batch_size = 32"),
    ("params = { width = 8, depth = 1 }\nepochs = 2", "params = { width = 16, depth = 2 }\nepochs = 2\nlr = 0.02"),
    ("params = { width = 4, depth = 1 }", "params = { width = 4, depth = 2 }"),
    ("[distill]\nepochs = 2", "[distill]\nepochs = 3\nlr = 0.02\ncheckpoint_every = 5"),
    ("[qat]\nenabled = true", "[qat]\nenabled = false"),  # QAT's own tests cover it; keep these runs short
)


def cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def cli(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """``python -m edgedistill ARGS`` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "edgedistill", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=cli_env(), timeout=timeout)


def popen(*args, log: Path) -> subprocess.Popen:
    f = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "edgedistill", *map(str, args)], stdout=f, stderr=subprocess.STDOUT,
                            text=True, env=cli_env())


def assert_nothing_half_written(run_dir: Path) -> None:
    """No temporary file is left, and every stage the manifest calls done has its outputs intact."""
    if not run_dir.exists():
        return
    leftovers = [p for p in run_dir.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".bundle.")
                 or p.name.endswith(".export.onnx")]
    assert not leftovers, leftovers
    manifest = run_dir / "manifest.json"
    if manifest.exists():
        from edgedistill._io import sha256_file

        stages = json.loads(manifest.read_text()).get("stages", {})
        for name, st in stages.items():
            if st.get("status") == "done":
                for rel, digest in st["outputs"].items():
                    assert sha256_file(run_dir / rel) == digest, (name, rel)


IMPOSSIBLE_TARGET = 'name = "impossible"\ncores = 1\nthreads = 1\n[budgets]\nsize_mb = 0.000001\np90_ms = 0.000001\n'


@dataclass
class Runs:
    """Two runs of RESUME_RECIPE, both from scratch, in separate processes started together:

    - ``a``: uninterrupted, against a target no model can meet (so it must finish with exit 3; the
      target only changes the bench, report and bundle stages);
    - ``c``: one run folder, stopped twice mid-distill: ``c1`` is SIGKILLed once the distill stage has
      written its first checkpoint, ``c2`` (``--resume``) gets SIGINT (Ctrl-C) once it has written a
      checkpoint of its own, and ``c3`` (``--resume``) finishes the run.

    (A third, plain run would make the determinism check independent of resuming; it is left out
    to keep the battery short: a and c are already two separate from-scratch runs of one recipe.)
    """

    root: Path
    recipe: Path
    rc: dict = field(default_factory=dict)          # name -> exit code (None: it was never stopped)
    log: dict = field(default_factory=dict)         # name -> combined stdout/stderr
    manifest_after_stop: dict = field(default_factory=dict)  # "c1"/"c2" -> manifest right after the stop

    def dir(self, name: str) -> Path:
        return self.root / name[0]


def _inode(path: Path):
    try:
        return path.stat().st_ino  # an atomic write (rename) gives the file a new inode
    except FileNotFoundError:
        return None


def _stop_at_next_checkpoint(proc: subprocess.Popen, ckpt: Path, sig: int, deadline: float) -> bool:
    """Send ``sig`` once ``ckpt`` is (re)written; False if the process ended first."""
    before = _inode(ckpt)
    while time.monotonic() < deadline:
        now = _inode(ckpt)
        if now is not None and now != before:
            proc.send_signal(sig)
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


def start_runs(root: Path, timeout: float = 600.0) -> Runs:
    recipe = root / "resume.toml"
    recipe.write_text(RESUME_RECIPE)
    target = root / "impossible.toml"
    target.write_text(IMPOSSIBLE_TARGET)
    runs = Runs(root, recipe)
    deadline = time.monotonic() + timeout
    procs = {"a": popen("run", recipe, "--run-dir", root / "a", "--target", target, log=root / "a.log")}
    ckpt = root / "c" / "03_distill" / "checkpoints" / "last.pt"
    for part, sig in (("c1", signal.SIGKILL), ("c2", signal.SIGINT), ("c3", None)):
        args = ["run", recipe, "--run-dir", root / "c"] + (["--resume"] if part != "c1" else [])
        proc = popen(*args, log=root / f"{part}.log")
        if sig is not None:
            runs.rc[part + "_stopped"] = _stop_at_next_checkpoint(proc, ckpt, sig, deadline)
        runs.rc[part] = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        runs.log[part] = (root / f"{part}.log").read_text()
        manifest = root / "c" / "manifest.json"
        runs.manifest_after_stop[part] = json.loads(manifest.read_text()) if manifest.exists() else {}
    for n, p in procs.items():
        runs.rc[n] = p.wait(timeout=max(1.0, deadline - time.monotonic()))
        runs.log[n] = (root / f"{n}.log").read_text()
    return runs
