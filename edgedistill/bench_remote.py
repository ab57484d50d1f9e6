"""The benchmark on another machine, over SSH: the models are copied into a temporary folder there, the
device's own torch-free ``edgedistill bench --json`` measures them, and its JSON (with the device's machine
facts) comes back; the folder is removed afterwards, also when something fails.

Before anything is copied a probe checks that the remote python has edgedistill and onnxruntime (else the
error gives the one pip line to run there) and that its temporary folder has room for the models. A result
comes back only from a remote bench that finished (exit 0) and printed one whole JSON object: a dropped
connection or a failed run is an error, never a partial measurement. :func:`edgedistill.bench.benchmark`
uses this when it is given a remote (``--remote``, or a target's ``remote`` key).
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path, PurePosixPath

from ._ssh import SSH, Remote, RemoteError

DISK_HEADROOM_MB = 16  # room left free beyond the models themselves (the bench writes nothing else)
_PROBE = r"""
import json, shutil, sys, tempfile
out = {"python": sys.version.split()[0], "missing": None}
for mod, pkg in (("edgedistill", "edgedistill"), ("onnxruntime", "onnxruntime"), ("onnx", "onnx"),
                 ("numpy", "numpy"), ("click", "click"), ("edgedistill.bench", "edgedistill")):
    try:
        __import__(mod)
    except ImportError as e:
        out["missing"], out["pip"], out["why"] = mod, pkg, str(e)
        break
if out["missing"] is None:
    import edgedistill, onnxruntime
    out.update(edgedistill=edgedistill.__version__, onnxruntime=onnxruntime.__version__,
               providers=onnxruntime.get_available_providers())
    try:
        d = tempfile.mkdtemp(prefix="edgedistill-bench-")
        out["dir"], out["free_bytes"] = d, shutil.disk_usage(d).free
    except OSError as e:
        out["tmp_error"] = "%s (%s)" % (e.strerror or e, tempfile.gettempdir())
print(json.dumps(out))
"""


class RemoteBench:
    """``with RemoteBench(remote, ssh_options, python) as rb: rb.run(paths, settings)``.

    ``python`` is the command that starts the remote python (default ``python3``), inserted into the remote
    shell's command line as written (``~/venv/bin/python`` works)."""

    def __init__(self, remote: Remote, ssh_options: list[str] = (), python: str = "python3"):
        self.ssh, self.remote, self.python = SSH(remote, ssh_options), remote, python
        self.dir: str | None = None
        self.facts: dict = {}

    def __enter__(self) -> "RemoteBench":
        self.facts = self._probe()
        self.dir = self.facts["dir"]
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.dir is None:
            return
        try:
            done = self.ssh.run(f"rm -rf -- {shlex.quote(self.dir)}", "removing its temporary folder", timeout=60)
            ok = done.returncode == 0
        except RemoteError:
            ok = False
        if not ok:
            left = f"; the temporary folder {self.dir} may remain on {self.remote}: remove it by hand"
            if exc is not None and isinstance(exc, RemoteError):
                exc.args = (str(exc).rstrip(".") + left + ".",)
            elif exc is None:
                self.facts["note"] = left.lstrip("; ") + "."

    @property
    def available_providers(self) -> list[str]:
        return self.facts["providers"]

    def _probe(self) -> dict:
        py = self.python
        done = self.ssh.run(f"{py} -c {shlex.quote(_PROBE)}", "checking the device's python", timeout=120)
        if done.returncode == 127 or "not found" in done.stderr and not done.stdout.strip():
            raise RemoteError(f"{self.remote}: there is no `{py}` to run (the remote python); install Python 3 "
                              "there or name its python with --remote-python (target key remote_python).")
        try:
            facts = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise RemoteError(f"{self.remote}: `{py}` did not run the check ({last}); make it a Python 3 "
                              "interpreter (--remote-python).") from None
        if facts.get("missing"):
            raise RemoteError(f"{self.remote}: {facts['missing']} is not installed for `{py}` there "
                              f"({facts['why']}); run `{py} -m pip install {facts['pip']}` on the device, then retry.")
        if facts.get("tmp_error"):
            raise RemoteError(f"{self.remote}: cannot make a temporary folder there: {facts['tmp_error']}; make "
                              "its temporary folder writable (or free disk space), then retry.")
        return facts

    def run(self, paths: list[str], settings: dict) -> dict:
        """Copy ``paths`` over, run ``edgedistill bench --json`` there with ``settings`` (threads, runs, warmup,
        min_seconds, batch_size, seq_len, ci_tolerance, max_seconds, providers) and return its result, paths mapped back to ``paths``."""
        rels = [f"{i}/{Path(p).name}" for i, p in enumerate(paths)]  # one folder each: two files may share a name
        back = dict(zip(rels, paths))
        self._check_disk(paths)
        for rel, p in back.items():
            for f in [p] + ([p + ".data"] if os.path.isfile(p + ".data") else []):
                self._copy(f, rel + f[len(p):])
        opts = ["--json", "--threads", settings["threads"], "--runs", settings["runs"], "--warmup", settings["warmup"],
                "--min-seconds", settings["min_seconds"], "--batch-size", settings["batch_size"],
                "--seq-len", settings["seq_len"], "--ci-tolerance", settings["ci_tolerance"] or 0,
                "--max-seconds", settings["max_seconds"]] + [a for pv in settings["providers"] for a in ("--provider", pv)]
        d = shlex.quote(self.dir)
        line = (f"trap 'cd / && rm -rf -- {d}' EXIT; cd {d} && {self.python} -m edgedistill bench "
                + shlex.join([str(a) for a in opts] + ["--"] + rels))
        try:
            done = self.ssh.run(line, "running the benchmark")
        except RemoteError as e:  # e.g. the connection dropped: whatever it printed so far is not a measurement
            raise RemoteError(str(e).rstrip(".") + "; nothing was measured.") from None
        result = self._result(done, back)
        for m in result["models"]:
            m["path"] = back[m["path"]]
        for q in result["ratios"]:
            q["model"], q["baseline"] = back[q["model"]], back[q["baseline"]]
        result["remote"] = {"host": str(self.remote), "python": self.facts["python"],
                            "edgedistill": self.facts["edgedistill"]}
        return result

    def _check_disk(self, paths: list[str]) -> None:
        need = sum(os.path.getsize(f) for p in paths for f in (p, p + ".data") if os.path.isfile(f))
        free = self.facts["free_bytes"]
        if free < need + DISK_HEADROOM_MB * 2**20:
            raise RemoteError(f"{self.remote}: only {free / 1e6:.1f} MB free in {PurePosixPath(self.dir).parent} "
                              f"for {need / 1e6:.1f} MB of models (plus {DISK_HEADROOM_MB} MB headroom); free some "
                              "disk space on the device, then retry.")

    def _copy(self, local: str, rel: str) -> None:
        target = PurePosixPath(self.dir, rel)
        line = f"mkdir -p {shlex.quote(str(target.parent))} && cat > {shlex.quote(str(target))}"
        with open(local, "rb") as f:
            done = self.ssh.run(line, f"copying {local}", stdin=f)
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["no message"])[-1]
            todo = ("free some disk space on the device, then retry" if "No space left" in done.stderr
                    else "check the device's temporary folder, then retry")
            raise RemoteError(f"{self.remote}: copying {local} to {target} failed ({why}); {todo}.")

    def _result(self, done, back: dict) -> dict:
        rels = list(back)
        err = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
        if done.returncode != 0:
            msg = next((ln[len("Error: "):] for ln in reversed(err) if ln.startswith("Error: ")), None)
            if msg is None:
                msg = f"it stopped with exit status {done.returncode} ({err[-1] if err else 'no message'})"
            for rel, local in back.items():  # name the user's files, not their copies
                msg = msg.replace(f"{self.dir}/{rel}", local).replace(rel, local)
            raise RemoteError(f"{self.remote}: the benchmark failed there: {msg.rstrip('.')}; nothing was measured.")
        try:
            result = json.loads(done.stdout)
            ok = isinstance(result, dict) and [m.get("path") for m in result.get("models", [])] == rels
        except (ValueError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise RemoteError(f"{self.remote}: the remote bench printed no complete result; nothing was measured "
                              "(check that the device's edgedistill is the same version as this one).")
        return result
