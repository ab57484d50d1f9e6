"""The benchmark over SSH, against an ``sshd`` this module starts on 127.0.0.1 with throw-away host and user
keys (Debian ``openssh-server``; skipped where ``/usr/sbin/sshd`` is missing). The "device" runs this very
python (``--remote-python sys.executable``), so it runs the same code; its temporary folders are on this
machine's disk, where the tests check that they are gone afterwards."""

import glob
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import onnx_models
from edgedistill import bench
from edgedistill._machine import architecture, cpu_count
from edgedistill._ssh import SSH, check_ssh_options, parse_remote
from edgedistill.bench_remote import RemoteBench
from edgedistill.cli_runtime import _bench_text
from edgedistill.errors import ConfigError
from edgedistill.targets import load_target
from tests._cli import edgedistill

SSHD = "/usr/sbin/sshd"
# The remote is this machine: its temporary folders (_leftovers) are /tmp's, which every pytest-xdist worker
# shares; `make test` distributes by module (--dist loadfile), so this module's tests run on one worker.
FAST = ["--runs", "5", "--warmup", "1", "--min-seconds", "0"]
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An sshd on 127.0.0.1 that admits this user with a throw-away key; yields what a client needs."""
    if not os.path.exists(SSHD) or shutil.which("ssh") is None:
        pytest.skip("needs /usr/sbin/sshd and ssh (Debian: apt-get install openssh-server)")
    d = tmp_path_factory.mktemp("sshd")
    host_pub = _keygen_pair(d / "host_key")
    user_pub = _keygen_pair(d / "user_key")
    (d / "authorized_keys").write_text(user_pub + "\n")
    port = _free_port()
    config = [f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}", f"PidFile {d / 'sshd.pid'}",
              f"AuthorizedKeysFile {d / 'authorized_keys'}", "StrictModes no", "UsePAM no",
              "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
              "PrintMotd no", "LogLevel ERROR"]
    (d / "sshd_config").write_text("\n".join(config) + "\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # the privilege-separation folder sshd insists on
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=log)
    deadline, listening = time.monotonic() + 15, False
    while not listening and time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            listening = True
        except OSError:
            time.sleep(0.1)
    if not listening:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()[-2000:]}")
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    import getpass

    info = {"dir": d, "port": port, "remote": f"{getpass.getuser()}@127.0.0.1:{port}",
            "options": [f"IdentityFile={d / 'user_key'}", "IdentitiesOnly=yes", f"UserKnownHostsFile={d / 'known_hosts'}",
                        "GlobalKnownHostsFile=/dev/null"]}
    yield info
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def _keygen_pair(path: Path) -> str:
    """Make an ed25519 key pair at ``path``; return the public key's ``type base64`` part."""
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(path)], check=True, capture_output=True)
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(onnx_models.conv(tmp_path_factory.mktemp("models") / "conv.onnx"))


def _leftovers() -> set[str]:
    """The remote's temporary folders: the remote is this machine, so they are in its temp folder (sshd's sessions
    start without our TMPDIR: /tmp)."""
    return {p for d in {tempfile.gettempdir(), "/tmp"} for p in glob.glob(os.path.join(d, "edgedistill-bench-*"))}


def _bench(sshd, *args, python=None, options=None, remote=None):
    opts = [a for o in (sshd["options"] if options is None else options) for a in ("--ssh-option", o)]
    return edgedistill("bench", *args, "--remote", remote or sshd["remote"], *opts,
                       "--remote-python", python or sys.executable, *FAST)


def _one_sentence_error(proc, *needles):
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    msg = lines[-1]  # after the progress line: one sentence
    assert msg.startswith("Error: ") and len(lines) <= 2, proc.stderr
    for n in needles:
        assert n in msg, msg
    print(msg)
    return msg


def test_bench_over_ssh_gives_the_device_json_and_cleans_up(sshd, model, tmp_path):
    before = _leftovers()
    target = tmp_path / "board.toml"
    target.write_text(f'name = "board"\narchitecture = "{architecture()}"\ncores = {cpu_count()}\nthreads = 1\n'
                      "[budgets]\nsize_mb = 1.0\np90_ms = 1000.0\n")
    proc = _bench(sshd, model, model, "--target", target, "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["remote"]["host"] == sshd["remote"] and r["remote"]["edgedistill"]
    assert [m["path"] for m in r["models"]] == [model, model]  # the user's paths, not the copies' names
    assert all(m["runs"] >= 5 and m["latency_ms"]["p90"] > 0 for m in r["models"])
    assert r["ratios"][0]["model"] == model and r["ratios"][0]["baseline"] == model
    assert {"cpu", "cores", "architecture", "isa", "onnxruntime"} <= set(r["machine"])
    assert r["settings"]["threads"] == 1 and r["settings"]["providers"] == ["CPUExecutionProvider"]
    assert r["deliverable"] == model and r["ok"] is True and r["host_matches_target"] is True
    assert f"on {sshd['remote']} over SSH" in proc.stderr
    assert _leftovers() == before


def test_a_target_remote_key_sends_the_bench_there_and_the_text_says_where(sshd, model, tmp_path):
    target = tmp_path / "pi.toml"
    target.write_text('name = "pi"\narchitecture = "aarch64"\ncores = 4\nthreads = 1\n'
                      f"remote = {json.dumps(sshd['remote'])}\nssh_options = {json.dumps(sshd['options'])}\n"
                      f"remote_python = {json.dumps(sys.executable)}\n[budgets]\nsize_mb = 1.0\n")
    r = bench.benchmark([model], target=load_target(str(target)), runs=5, warmup=1, min_seconds=0, deliverable=model)
    assert r["remote"]["host"] == sshd["remote"] and r["models"][0]["path"] == model
    assert r["host_matches_target"] is False and f"the remote {sshd['remote']} is" in r["host_note"]
    text = _bench_text(r)
    assert f"machine: remote {sshd['remote']}: " in text and f"-- note: the remote {sshd['remote']} is" in text


def test_unknown_host_key_is_refused_not_accepted(sshd, model, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    opts = [o if not o.startswith("UserKnownHostsFile=") else f"UserKnownHostsFile={empty}" for o in sshd["options"]]
    _one_sentence_error(_bench(sshd, model, options=opts), sshd["remote"], "not in your known_hosts")
    assert empty.read_text() == ""  # nothing was added behind the user's back


def test_host_key_mismatch_is_one_sentence(sshd, model, tmp_path):
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd['port']} {_keygen_pair(tmp_path / 'k2')}\n")
    opts = [o if not o.startswith("UserKnownHostsFile=") else f"UserKnownHostsFile={wrong}" for o in sshd["options"]]
    _one_sentence_error(_bench(sshd, model, options=opts), sshd["remote"], "does not match", "ssh-keygen -R")


def test_a_key_that_is_not_authorized_is_no_access(sshd, model, tmp_path):
    stranger = tmp_path / "stranger"
    _keygen_pair(stranger)
    opts = [o if not o.startswith("IdentityFile=") else f"IdentityFile={stranger}" for o in sshd["options"]]
    _one_sentence_error(_bench(sshd, model, options=opts), sshd["remote"], "no SSH access", "IdentityFile")


def test_a_port_nobody_listens_on(sshd, model):
    remote = sshd["remote"].rsplit(":", 1)[0] + f":{_free_port()}"
    _one_sentence_error(_bench(sshd, model, remote=remote), remote, "nothing accepts SSH connections")


def test_a_remote_without_that_python(sshd, model):
    before = _leftovers()
    _one_sentence_error(_bench(sshd, model, python="/nonexistent/python3"), sshd["remote"],
                        "no `/nonexistent/python3`", "--remote-python")
    assert _leftovers() == before


@pytest.mark.parametrize("python, missing, pip", [
    (f"{shlex.quote(sys.executable)} -S", "edgedistill", "-S -m pip install edgedistill`"),  # -S: no site-packages
    (f"PYTHONPATH={shlex.quote(str(ROOT))} {shlex.quote(sys.executable)} -S", "onnxruntime",
     "-m pip install onnxruntime`"),
])
def test_a_remote_without_edgedistill_or_onnxruntime_gets_the_pip_line(sshd, model, python, missing, pip):
    before = _leftovers()
    _one_sentence_error(_bench(sshd, model, python=python), sshd["remote"], f"{missing} is not installed", pip)
    assert _leftovers() == before


def test_a_folder_that_cannot_be_removed_is_named_beside_the_figures(sshd, model, monkeypatch):
    real = SSH.run

    def run(self, command, doing, **kw):  # the final removal fails (the remote command's own trap still ran)
        if command.startswith("rm -rf"):
            return subprocess.CompletedProcess(command, 1, "", "rm: Permission denied")
        return real(self, command, doing, **kw)

    monkeypatch.setattr(SSH, "run", run)
    r = bench.benchmark([model], runs=5, warmup=1, min_seconds=0, remote=sshd["remote"], ssh_options=sshd["options"],
                        remote_python=sys.executable)
    assert r["remote"]["note"].startswith("the temporary folder /") and "remove it by hand" in r["remote"]["note"]
    assert r["models"][0]["runs"] >= 5
    assert f"note: {r['remote']['note']}" in _bench_text(r)


def _probe_then(monkeypatch, change):
    """Let the real probe run (it makes the remote folder), then ``change(facts)`` before the copy."""
    real = RemoteBench._probe

    def probe(self):
        facts = real(self)
        change(facts)
        return facts

    monkeypatch.setattr(RemoteBench, "_probe", probe)


def test_too_little_disk_is_said_before_copying(sshd, model, monkeypatch):
    before = _leftovers()
    _probe_then(monkeypatch, lambda facts: facts.update(free_bytes=1_000_000))
    _one_sentence_error(_bench(sshd, model), sshd["remote"], "only 1.0 MB free", "free some disk space")
    assert _leftovers() == before  # the remote folder went too


def test_a_disk_that_fills_up_while_copying(sshd, model, monkeypatch):
    # the remote is this machine: its copy of the model is made to land on /dev/full (writes fail with ENOSPC)
    def fill(facts):
        os.makedirs(os.path.join(facts["dir"], "0"))
        os.symlink("/dev/full", os.path.join(facts["dir"], "0", Path(model).name))

    before = _leftovers()
    _probe_then(monkeypatch, fill)
    _one_sentence_error(_bench(sshd, model), sshd["remote"], "No space left on device", "free some disk space")
    assert _leftovers() == before


def test_a_connection_dropped_mid_run_reports_no_measurement(sshd, model, tmp_path):
    # a "python" that checks like the real one but, asked to bench, kills its SSH session (the nearest sshd above it)
    fake = tmp_path / "dropping_python"
    fake.write_text(f"""#!{sys.executable}
import os, signal, sys
if sys.argv[1:3] == ["-m", "edgedistill"]:
    pid = os.getppid()
    while pid > 1:
        with open(f"/proc/{{pid}}/stat") as f:
            stat = f.read()
        if stat[stat.index("(") + 1:stat.rindex(")")].startswith("sshd"):
            os.kill(pid, signal.SIGKILL)
            break
        pid = int(stat[stat.rindex(")") + 2:].split()[1])
    sys.exit(9)
os.execv({sys.executable!r}, [{sys.executable!r}] + sys.argv[1:])
""")
    fake.chmod(0o755)
    before = _leftovers()
    _one_sentence_error(_bench(sshd, model, python=str(fake)), sshd["remote"], "dropped", "nothing was measured")
    assert _leftovers() == before


def test_remote_and_ssh_options_are_checked_where_they_are_given(tmp_path, model):
    assert parse_remote("pi@192.168.1.20:2222").port == 2222 and parse_remote("pi@[fe80::1]:22").host == "fe80::1"
    assert parse_remote("raspberrypi").user is None
    for bad in ("-oProxyCommand=x", "pi@host:0", "pi@host:99999", "pi@ho st", ""):
        with pytest.raises(ConfigError, match="is not USER@HOST"):
            parse_remote(bad)
    with pytest.raises(ConfigError, match=r"ssh_options\[0\]: '-F' is not an ssh option KEY=VALUE"):
        check_ssh_options(["-F"])
    t = tmp_path / "t.toml"
    t.write_text('name = "t"\nremote = "pi@bad host"\n')
    with pytest.raises(ConfigError, match="remote: 'pi@bad host' is not USER@HOST"):
        load_target(str(t))
    proc = edgedistill("bench", model, "--remote", "pi@127.0.0.1", "--ssh-option", "StrictHostKeyChecking")
    _one_sentence_error(proc, "--ssh-option[0]: 'StrictHostKeyChecking' is not an ssh option")


def test_ssh_is_run_in_batch_mode_and_never_turns_host_keys_off():
    argv = SSH(parse_remote("pi@host:2200"), ["IdentityFile=/k"]).argv("true")
    assert argv[:3] == ["ssh", "-o", "BatchMode=yes"] and "Port=2200" in argv and "IdentityFile=/k" in argv
    assert not any("StrictHostKeyChecking" in a or "KnownHostsFile" in a for a in argv)
    assert argv[-3:] == ["--", "pi@host", "true"]


@pytest.mark.slow  # a whole tiny run (about 30 s here)
def test_the_pipeline_bench_stage_runs_on_the_targets_remote(sshd, tmp_path):
    from tests.conftest import TINY_RECIPE

    (tmp_path / "tiny.toml").write_text(TINY_RECIPE)
    target = tmp_path / "board.toml"
    target.write_text('name = "board"\narchitecture = "aarch64"\ncores = 4\nthreads = 1\n'
                      f"remote = {json.dumps(sshd['remote'])}\nssh_options = {json.dumps(sshd['options'])}\n"
                      f"remote_python = {json.dumps(sys.executable)}\n[budgets]\nsize_mb = 20.0\n")
    before = _leftovers()
    proc = edgedistill("run", tmp_path / "tiny.toml", "--run-dir", tmp_path / "out", "--target", target)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bench_json = json.loads((tmp_path / "out" / "08_bench" / "bench.json").read_text())
    assert bench_json["remote"]["host"] == sshd["remote"]
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert report["remote"]["host"] == sshd["remote"]
    assert any(w.startswith(f"The benchmark ran on the remote {sshd['remote']}") for w in report["warnings"])
    assert f"Measured over SSH on {sshd['remote']}" in (tmp_path / "out" / "report" / "report.md").read_text()
    assert _leftovers() == before

