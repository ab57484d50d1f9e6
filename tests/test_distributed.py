"""Training across processes with torch.distributed (gloo on this CPU): the gradient arithmetic against one
process, gradient accumulation against a larger batch, torchrun runs of the pipeline (identical weights on every
rank, the report against a one-process run, kill and resume), and the failures a user meets."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests._reliab import RESUME_RECIPE, assert_nothing_half_written, cli_env, popen

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]

# One rank of a fit on digits (an MLP: no BatchNorm, so the ranks' sum is the one-process step up to rounding).
FIT_SCRIPT = """
import sys, torch
from edgedistill import distributed as dist
from edgedistill.data import load_data
from edgedistill.distill.losses import LossContext, build_loss
from edgedistill.distill.train import FitConfig, Term, fit
from edgedistill.models import build_model
from edgedistill.recipe import DataConfig
dist.init()
splits = load_data(DataConfig(dataset="digits", max_train_samples=300), 0)
torch.manual_seed(0)
model = build_model("mlp", {"hidden": [32]}, splits.input_shape, splits.num_classes, "student")
ce = build_loss("ce", {}, LossContext(num_classes=splits.num_classes), "t")
cfg = FitConfig(epochs=2, lr=0.01, batch_size=int(sys.argv[2]), accumulate=int(sys.argv[3]), seed=0, device="cpu",
                workers=0)
fit(model, splits.train, cfg, [Term("ce", ce)], sys.argv[1] + "/out", val=None)
if dist.is_main():
    torch.save(model.state_dict(), sys.argv[1] + "/weights.pt")
if dist.active():  # the check fit ends with sees a drift of one weight on one rank
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += dist.rank() * 1e-6
    print("drift seen:", not dist.same_weights(model))
dist.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], world: int, tmp_path: Path, **env) -> list[subprocess.Popen]:
    """``python ARGS`` once per rank, as torchrun would start them (RANK, WORLD_SIZE, a rendezvous on 127.0.0.1)."""
    port, procs = _free_port(), []
    for r in range(world):
        e = {**cli_env(), "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(port), **env}
        procs.append(subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=e, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float = 300) -> list[subprocess.CompletedProcess]:
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        outs.append(subprocess.CompletedProcess(p.args, p.returncode, out, ""))
    return outs


def _ranks(args: list[str], world: int, tmp_path: Path, timeout: float = 300, **env) -> list[subprocess.CompletedProcess]:
    return _wait(_start(args, world, tmp_path, **env), timeout)


def _fits(tmp_path: Path, *runs: tuple[str, int, int, int]) -> list[dict]:
    """The weights of FIT_SCRIPT's runs ``(name, world, batch, accumulate)``, all started at once."""
    started = []
    for name, world, batch, accumulate in runs:
        (tmp_path / name).mkdir()
        started.append(_start(["-c", FIT_SCRIPT, str(tmp_path / name), str(batch), str(accumulate)], world, tmp_path))
    for (name, world, _, _), procs in zip(runs, started):
        for p in _wait(procs):
            assert p.returncode == 0, p.stdout
            assert world == 1 or "drift seen: True" in p.stdout, p.stdout
    return [torch.load(tmp_path / name / "weights.pt") for name, *_ in runs]


def _close(a: dict, b: dict, atol: float) -> float:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= atol, worst
    return worst


def test_two_ranks_sharing_each_batch_take_the_one_process_step(tmp_path):
    one, two = _fits(tmp_path, ("one", 1, 64, 1), ("two", 2, 64, 1))  # fit refuses to end if the ranks' weights differ
    _close(one, two, atol=1e-5)


def test_accumulating_two_batches_of_32_takes_the_step_of_one_batch_of_64(tmp_path):
    _close(*_fits(tmp_path, ("b64", 1, 64, 1), ("b32x2", 1, 32, 2)), atol=1e-5)


def test_ranks_given_different_recipes_are_refused(tmp_path):
    from tests.conftest import TINY_RECIPE

    (tmp_path / "a.toml").write_text(TINY_RECIPE)
    (tmp_path / "b.toml").write_text(TINY_RECIPE.replace("seed = 0", "seed = 1"))
    script = ("import os, sys; from edgedistill.cli import main; "
              "sys.argv = ['edgedistill', 'run', 'a.toml' if os.environ['RANK'] == '0' else 'b.toml', '--run-dir', 'r']; "
              "main()")
    outs = _ranks(["-c", script], 2, tmp_path, timeout=120)
    for p in outs:
        assert p.returncode == 1, p.stdout
        assert "Error: the recipe or target differs between ranks: rank(s) 1 read another one than rank 0" in p.stdout
        assert "Traceback" not in p.stdout
    assert not (tmp_path / "r").exists()  # nothing written


def test_two_ranks_build_the_teacher_cache_between_them(tmp_path):
    from tests.conftest import TINY_RECIPE

    recipe = TINY_RECIPE.replace("[distill]\n", "[distill]\ncache = true\ncache_shard_size = 200\n", 1)
    recipe = recipe.replace("[qat]\nenabled = true", "[qat]\nenabled = false")  # the cache is the distill stage's
    assert recipe.count("enabled = false") == 1 and "cache_shard_size" in recipe
    (tmp_path / "a.toml").write_text(recipe)
    outs = _ranks(["-m", "edgedistill", "run", "a.toml", "--run-dir", "r"], 2, tmp_path)
    assert [p.returncode for p in outs] == [0, 0], outs[0].stdout + outs[1].stdout
    report = json.loads((tmp_path / "r" / "03_distill" / "meta.json").read_text())["teacher_cache"]
    shards = -(-report["num_samples"] // 200)
    assert report["shards"] == shards >= 3 and report["hit"] is False
    # rank 0 ran the teacher over its own shards only (0, 2, ...); the cache opened whole, so rank 1 built the rest
    built = re.findall(r"teacher cache: (\d+) samples of (\d+) shard\(s\)", outs[0].stdout)
    assert built and int(built[-1][1]) == (shards + 1) // 2, outs[0].stdout
    folder = next((tmp_path / "r" / "teacher_cache").glob("teacher_*"))
    assert len(list(folder.glob("shard_*.done"))) == shards


def test_a_rank_that_cannot_see_the_run_folder_is_one_sentence(tmp_path):
    from tests.conftest import TINY_RECIPE

    (tmp_path / "a.toml").write_text(TINY_RECIPE)
    script = ("import os, sys; from edgedistill.cli import main; "
              "sys.argv = ['edgedistill', 'run', 'a.toml', '--run-dir', 'r' if os.environ['RANK'] == '0' else 'elsewhere']; "
              "main()")  # another machine, whose --run-dir is not the folder rank 0 writes
    r0, r1 = _ranks(["-c", script], 2, tmp_path, timeout=120, EDGEDISTILL_DIST_TIMEOUT="30")
    assert r1.returncode == 1 and "Traceback" not in r1.stdout, r1.stdout
    assert f"Error: rank 1: cannot see the run folder {tmp_path / 'elsewhere'} that rank 0 writes" in r1.stdout
    assert r0.returncode == 1 and "Error: rank 0: lost the other processes during the teacher stage" in r0.stdout, r0.stdout


def test_a_rank_that_never_joins_is_one_sentence(tmp_path):
    from tests.conftest import TINY_RECIPE

    (tmp_path / "a.toml").write_text(TINY_RECIPE)
    [p] = _ranks(["-m", "edgedistill", "run", "a.toml", "--run-dir", "r"], 1, tmp_path, timeout=120,
                 WORLD_SIZE="2", EDGEDISTILL_DIST_TIMEOUT="2")
    assert p.returncode == 1 and "Traceback" not in p.stdout, p.stdout
    assert "Error: rank 0: could not join the 2 processes at 127.0.0.1:" in p.stdout and "within 2 s" in p.stdout
    assert not (tmp_path / "r").exists()


def test_a_rank_that_dies_is_one_sentence_on_rank_0_and_the_run_resumes(tmp_path):
    from tests.conftest import TINY_RECIPE

    recipe = TINY_RECIPE.replace("[qat]\nenabled = true", "[qat]\nenabled = false")  # the resumed run, shorter
    assert recipe != TINY_RECIPE
    (tmp_path / "a.toml").write_text(recipe)
    port, procs = _free_port(), []
    for r in range(2):  # the processes torchrun would start, without torchrun's SIGTERM to the survivors
        env = {**cli_env(), "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "EDGEDISTILL_DIST_TIMEOUT": "60"}
        procs.append(subprocess.Popen([sys.executable, "-m", "edgedistill", "run", "a.toml", "--run-dir", "r"], cwd=tmp_path,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    curves, deadline = tmp_path / "r" / "01_teacher", time.monotonic() + 120
    while not curves.exists() and procs[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)  # inside the teacher's first epoch
    procs[1].kill()
    out, _ = procs[0].communicate(timeout=120)
    procs[1].communicate()
    assert procs[0].returncode == 1, out
    assert "Error: rank 0: lost the other processes during the teacher stage (" in out, out
    assert "re-run the same command with --resume" in out and "Traceback" not in out
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["stages"]["teacher"]["status"] == "failed"
    assert_nothing_half_written(tmp_path / "r")
    again = _ranks(["-m", "edgedistill", "run", "a.toml", "--run-dir", "r", "--resume"], 2, tmp_path)
    assert [p.returncode for p in again] == [0, 0], again[0].stdout + again[1].stdout
    assert "[teacher] resuming..." in again[0].stdout


def _torchrun(*args, cwd: Path, log: Path, nproc: int = 2) -> subprocess.Popen:
    f = open(log, "w")
    return subprocess.Popen([*TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", "-m", "edgedistill", *map(str, args)],
                            cwd=cwd, env=cli_env(), stdout=f, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _metrics(run: Path) -> dict:
    report = json.loads((run / "report" / "report.json").read_text())
    return {m["name"]: m["metric"]["value"] for m in report["models"]}


#: The default recipe's test accuracies, 2 processes against 1, differed by at most 1.33 points (6 of the 450 test
#: images) when this was written (teacher 98.67 vs 98.44 %, student FP32 97.56 vs 98.89 %): each rank's BatchNorm
#: normalises its half of the batch, and the sums are rounded in another order.
TOLERANCE_POINTS = 3.0


@pytest.mark.slow
def test_torchrun_two_processes_run_the_default_recipe(tmp_path):
    # both at once: the one-process run (one thread) uses the core the two ranks leave idle in the stages rank 0
    # runs alone
    one = popen("run", "--run-dir", tmp_path / "one", log=tmp_path / "one.log")
    proc = _torchrun("run", "--run-dir", "two", cwd=tmp_path, log=tmp_path / "two.log")
    assert one.wait(timeout=900) == 0, (tmp_path / "one.log").read_text()[-3000:]
    assert proc.wait(timeout=900) == 0, (tmp_path / "two.log").read_text()[-3000:]
    two = tmp_path / "two"
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["processes"] == 2
    assert json.loads((two / "03_distill" / "meta.json").read_text())["processes"] == 2
    a, b = _metrics(tmp_path / "one"), _metrics(two)
    assert a.keys() == b.keys()
    for name in a:
        assert abs(a[name] - b[name]) * 100 <= TOLERANCE_POINTS, (name, a[name], b[name])
    log = (tmp_path / "two.log").read_text()
    assert log.count("[distill] running...") == 1  # rank 0 alone logs; the other rank says nothing
    assert not list(two.rglob("edgedistill-rank*"))


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (read from /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _wait_gone(pids: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{p}").exists() and "Z" not in _state(p) for p in pids):
        assert time.monotonic() < deadline, f"processes {pids} outlived SIGKILL"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _weights(run: Path) -> dict:
    return {p: (run / p).read_bytes() for p in ("01_teacher/model.pt", "03_distill/model.pt", "03_distill/curves.csv")}


@pytest.mark.slow
def test_torchrun_killed_mid_distill_resumes_to_the_uninterrupted_weights(tmp_path):
    recipe = tmp_path / "resume.toml"
    recipe.write_text(RESUME_RECIPE)
    whole = _torchrun("run", recipe, "--run-dir", "a", cwd=tmp_path, log=tmp_path / "a.log")  # beside the others
    killed = _torchrun("run", recipe, "--run-dir", "c", cwd=tmp_path, log=tmp_path / "c1.log")
    _wait_for_checkpoint(killed, tmp_path / "c")
    ranks = _children(killed.pid)  # torchrun starts each rank in a session of its own
    assert len(ranks) == 2, ranks
    for pid in [killed.pid, *ranks]:  # torchrun and both ranks at once, as when the machine goes down
        os.kill(pid, signal.SIGKILL)
    killed.wait(timeout=60)
    _wait_gone(ranks)
    stages = json.loads((tmp_path / "c" / "manifest.json").read_text())["stages"]
    assert stages["distill"]["status"] == "running"

    again = _torchrun("run", recipe, "--run-dir", "c", cwd=tmp_path, log=tmp_path / "c2.log")
    assert again.wait(timeout=900) == 0, (tmp_path / "c2.log").read_text()[-3000:]
    log = (tmp_path / "c2.log").read_text()
    assert "[teacher] unchanged, skipped" in log and "[distill] resuming the interrupted stage" in log
    resumed = json.loads((tmp_path / "c" / "03_distill" / "meta.json").read_text())["resumed_from"]
    assert resumed is not None and resumed != {"epoch": 0, "step": 0}
    assert whole.wait(timeout=900) == 0, (tmp_path / "a.log").read_text()[-3000:]
    assert _weights(tmp_path / "c") == _weights(tmp_path / "a")  # bit for bit
    assert_nothing_half_written(tmp_path / "c")

    # One rank dies: torchrun stops the other with SIGTERM; rank 0 says so in a sentence; --resume goes on.
    died = _torchrun("run", recipe, "--run-dir", "d", cwd=tmp_path, log=tmp_path / "d1.log")
    _wait_for_checkpoint(died, tmp_path / "d")
    os.kill(max(_children(died.pid)), signal.SIGKILL)  # the rank started last
    assert died.wait(timeout=120) != 0
    log = (tmp_path / "d1.log").read_text()
    # which comes first, torchrun's SIGTERM or the broken connection, is a race; either is one sentence
    assert re.search(r"Error: rank 0: (stopped by torchrun|lost the other processes) during the distill stage", log), \
        log[-3000:]
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["stages"]["distill"]["status"] == "failed"
    assert_nothing_half_written(tmp_path / "d")
    again = _torchrun("run", recipe, "--run-dir", "d", "--resume", cwd=tmp_path, log=tmp_path / "d2.log")
    assert again.wait(timeout=900) == 0, (tmp_path / "d2.log").read_text()[-3000:]
    assert _weights(tmp_path / "d") == _weights(tmp_path / "a")


def _wait_for_checkpoint(proc: subprocess.Popen, run: Path) -> None:
    ckpt, deadline = run / "03_distill" / "checkpoints" / "last.pt", time.monotonic() + 600
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before its first distill checkpoint"
