"""``run(recipe)``: the registered stages in order, the manifest, skip-if-unchanged, ``--from`` and a run lock.

Each stage reads its inputs from the run folder (never from memory of an earlier stage), so a
stage whose inputs' hashes match the manifest can be skipped on a re-run and any stage can be
re-run alone. The manifest records per stage: status, inputs' hash, outputs with their sha256,
seconds, library versions and the seed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from .. import _io, _signals, distributed as dist
from ..preflight import check_names, check_runtime, preflight
from ..errors import ConfigError, EdgeDistillError, os_errors_as_messages, require_pipeline
from ..recipe import Recipe, dump_recipe
from ..targets import Target, load_target
from .stage import STAGES, RunContext, Stage, resolved_recipe


def _versions() -> dict:
    import numpy
    import onnx
    import onnxruntime
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}


def stage_names() -> list[str]:
    _load_stages()
    return [s.name for s in STAGES.in_order()]


def _load_stages() -> None:
    from . import stages  # noqa: F401  (registers the built-in stages, in order)


class RunLock:
    """An exclusive lock on the run folder: a second run on the same folder is refused."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self.fd: Optional[int] = None

    def __enter__(self) -> "RunLock":
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise EdgeDistillError(f"{self.path.parent}: another edgedistill run is using this run folder; "
                                   "wait for it to finish or pass a different --run-dir.") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def run(recipe: Recipe, run_dir: str | os.PathLike | None = None, target: str | Target | None = None,
        from_stage: str | None = None, resume: bool = False, log: Callable[[str], None] | None = None,
        trust_checkpoint: bool = False, refit: bool = False) -> dict:
    """Run the pipeline; returns ``report.json``'s content. Raises EdgeDistillError on failure.

    ``trust_checkpoint`` lets the teacher stage fully unpickle a checkpoint that ``weights_only``
    refuses (with a warning); never set it for files you did not make. ``refit`` (after a run with
    ``student.size = "fit"``) trains the next fitting candidate down from the one the last run trained, from the
    student stage on (:func:`edgedistill.sizing.step_down`). Under ``torchrun`` every rank calls
    it: rank 0 runs the pipeline, the other ranks join the stages that train (see :func:`_follow`) and
    return an empty dict.
    """
    require_pipeline("edgedistill run")  # before anything is read or written: the light install cannot train
    names = stage_names()
    if from_stage is not None and from_stage not in names:
        raise ConfigError(f"--from: unknown stage {from_stage!r}; choose one of: {', '.join(names)}.")
    tgt = target if isinstance(target, Target) else load_target(target or recipe.target)
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / recipe.name
    started = dist.world() > 1 and not dist.active()
    dist.init()
    try:
        _same_recipe_on_every_rank(recipe, tgt)
        ctx = RunContext(recipe, tgt, run_dir, trust_checkpoint=trust_checkpoint,
                         log=log if dist.is_main() else (lambda msg: None))
        check_names(recipe)  # architectures, model and loss parameters: before any data is read
        check_runtime(ctx.task, tgt)  # a LiteRT target: a task it converts, and the converter installed
        if not dist.is_main():
            return _follow(ctx)
        if from_stage is not None or not _nothing_to_run(run_dir, recipe, tgt):  # a fully skipped re-run reads no data
            preflight(recipe, ctx.task, ctx.splits)  # shapes and layer paths, before the run folder is touched
        _check_writable(run_dir)
        with RunLock(run_dir), _signals.graceful_sigint(ctx.log), os_errors_as_messages(run_dir):
            if refit:
                from ..sizing import step_down

                down = step_down(run_dir / STAGES.get("size").dir)
                ctx.log(f"[size] --refit: training the next candidate down, {down['knobs']} (measured untrained: "
                        f"{down['size_mb']:.3f} MB, p90 {down['p90_ms']:.3f} ms)")
            _run_stages(ctx, from_stage, resume)
        return _io.read_json(run_dir / "report" / "report.json")
    finally:
        if started:
            dist.shutdown()


def _run_stages(ctx: RunContext, from_stage: str | None, resume: bool) -> None:
    """Rank 0's loop: each stage skipped when unchanged, else run (resumed when it was stopped), in order. Under
    torchrun it tells the other ranks each training stage it runs, then that no more will come."""
    recipe, run_dir = ctx.recipe, ctx.run_dir
    ctx.data_cache = run_dir / "data_cache"
    _io.write_text(run_dir / "recipe.toml", dump_recipe(recipe))
    manifest = _read_manifest(run_dir / "manifest.json")
    manifest.update({"seed": recipe.seed, "versions": _versions(), "target": ctx.target.name, "processes": dist.world()})
    stages_m = manifest.setdefault("stages", {})
    forced, stages = False, STAGES.in_order()
    followers = _Followers(last=max(i for i, s in enumerate(stages) if s.trains))
    with followers:
        for i, s in enumerate(stages):
            recipe = ctx.resolve(s)  # what the stages before it filled in (the size stage: the student's params)
            recipe_dict = recipe.to_dict()
            forced = forced or (from_stage == s.name)
            inputs_hash = _inputs_hash(s, recipe, recipe_dict, ctx.target, stages_m)
            prev = stages_m.get(s.name, {})
            if not forced and _unchanged(prev, inputs_hash, run_dir):
                ctx.log(f"[{s.name}] unchanged, skipped")
                followers.passed(i)
                continue
            # A later stage re-runs when its own inputs changed: its hash holds the outputs of the stages it reads,
            # so one that re-ran to the same files (the size stage switched off, or choosing the same student)
            # leaves the stages after it skipped; --from re-runs everything after it.
            same = prev.get("inputs_hash") == inputs_hash
            # a stage stopped by Ctrl-C or killed ("running" under no lock) continues by itself; --from restarts it
            auto = same and prev.get("status") in ("running", "interrupted") and from_stage is None and not resume
            resuming = auto or (resume and same and prev.get("status") in ("running", "failed", "interrupted"))
            ctx.log(f"[{s.name}] resuming the interrupted stage from its last checkpoint (`--from {s.name}` starts it "
                    "over)..." if auto else f"[{s.name}] {'resuming' if resuming else 'running'}...")
            stages_m[s.name] = {"status": "running", "inputs_hash": inputs_hash, "started": time.time()}
            if s.trains:
                followers.join(ctx, s)
            _run_stage(ctx, s, manifest, resuming)
            followers.passed(i)
            _release_heap()
            if _signals.stop_requested() and s is not stages[-1]:  # Ctrl-C during a stage without clean points
                raise _signals.Interrupted(f"after the {s.name} stage")


class _Followers:
    """Rank 0's messages to the other ranks under torchrun (nothing on one process): ``{"stage": name}`` before
    each training stage it runs, ``{"stage": None}`` once the last training stage is passed, ``{"error": ...}``
    when it stops before that outside a training stage (inside one, torchrun stops every rank)."""

    def __init__(self, last: int) -> None:
        self.last, self.done, self.training = last, not dist.active(), False

    def join(self, ctx: RunContext, s: Stage) -> None:
        if self.done:
            return
        if "data" in s.sections:
            ctx.splits  # noqa: B018  (decoded once here, before the other ranks read the same data cache)
        dist.broadcast({"stage": s.name})
        self.training = True

    def passed(self, i: int) -> None:
        self.training = False
        if not self.done and i >= self.last:
            dist.broadcast({"stage": None})
            self.done = True

    def __enter__(self) -> "_Followers":
        return self

    def __exit__(self, kind, e, tb) -> None:
        if e is not None and not self.done and not self.training:
            dist.broadcast({"error": str(e) or type(e).__name__})
            self.done = True


def _follow(ctx: RunContext) -> dict:
    """The loop of a rank other than 0 under torchrun: run each training stage rank 0 names, writing nothing into
    the run folder (its own stage's folder is a scratch folder), until rank 0 says no more will come."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix=f"edgedistill-rank{dist.rank()}-") as scratch:
        ctx.scratch, ctx.data_cache = Path(scratch), ctx.run_dir / "data_cache"
        while True:
            with dist.failures_as_errors("a wait for rank 0"):
                msg = dist.broadcast(None)
            if "error" in msg:
                raise EdgeDistillError(f"rank {dist.rank()}: rank 0 stopped the run: {msg['error']}")
            if msg["stage"] is None:
                return {}
            if not (ctx.run_dir / "recipe.toml").exists():  # rank 0 wrote it before naming the first stage
                raise EdgeDistillError(f"rank {dist.rank()}: cannot see the run folder {ctx.run_dir.resolve()} that "
                                       "rank 0 writes; on several machines put it on a filesystem they all share "
                                       "(NFS, Lustre) and pass the same --run-dir on each.")
            ctx.resolve(STAGES.get(msg["stage"]))  # the recipe rank 0 runs it with (rank 0 wrote the folders it reads)
            ctx.stage = STAGES.get(msg["stage"])
            try:
                with dist.failures_as_errors(f"the {ctx.stage.name} stage"):
                    ctx.stage.fn(ctx)
            finally:
                ctx.stage = None


def _same_recipe_on_every_rank(recipe: Recipe, tgt: Target) -> None:
    """Under torchrun, every rank must have read the same resolved recipe and target (a hash of both, compared)."""
    if not dist.active():
        return
    mine = _io.sha256_json({"recipe": recipe.to_dict(), "target": tgt.to_dict()})
    hashes = dist.gather(mine)
    if len(set(hashes)) > 1:
        differ = [r for r, h in enumerate(hashes) if h != hashes[0]]
        raise ConfigError(f"the recipe or target differs between ranks: rank(s) {', '.join(map(str, differ))} read "
                          "another one than rank 0; give every machine the same recipe file and edgedistill version.")


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise EdgeDistillError(f"{run_dir}: cannot write the run folder ({e.strerror}); choose a writable --run-dir.") from None


def _run_stage(ctx: RunContext, s: Stage, manifest: dict, resuming: bool) -> None:
    """Run one stage in its folder (emptied first unless it resumes) and record in the manifest how it ended: done
    with its outputs' hashes, failed, or interrupted."""
    stage_dir, manifest_path, record = ctx.run_dir / s.dir, ctx.run_dir / "manifest.json", manifest["stages"][s.name]
    if stage_dir.exists() and not resuming:
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    _io.write_json(manifest_path, manifest)
    t0 = time.perf_counter()
    ctx.stage = s
    try:
        with dist.failures_as_errors(f"the {s.name} stage"):
            s.fn(ctx)
    except BaseException as e:
        record.update({"status": "failed" if not isinstance(e, KeyboardInterrupt) else "interrupted",
                       "error": str(e)[:500], "seconds": round(time.perf_counter() - t0, 3)})
        if isinstance(e, KeyboardInterrupt) and not getattr(e, "stage", ""):
            e.stage = s.name  # for the "Interrupted in the ... stage" message
        try:
            _io.write_json(manifest_path, manifest)
        except OSError:
            pass  # a full disk: the stage stays "running", which --resume accepts too
        raise
    finally:
        ctx.stage = None
    record.update({"status": "done", "seconds": round(time.perf_counter() - t0, 3),
                   "outputs": {o: _io.sha256_file(ctx.run_dir / o) for o in _outputs(ctx.run_dir, s)}})
    _io.write_json(manifest_path, manifest)
    ctx.log(f"[{s.name}] done in {record['seconds']:.1f}s")


def _outputs(run_dir: Path, s: Stage) -> list[str]:
    """A stage's outputs: every file in its folder, its resume checkpoints aside (relative to the run folder)."""
    folder = run_dir / s.dir
    return sorted(str(p.relative_to(run_dir)) for p in folder.rglob("*") if p.is_file() and "checkpoints" not in p.parts)


def _inputs_hash(s: Stage, recipe: Recipe, recipe_dict: dict, tgt: Target, stages_m: dict) -> str:
    """What a stage's result depends on: its recipe sections (``target``: the resolved target), the seed and task,
    its dependencies' outputs and the user files its sections name."""
    inputs = {sec: tgt.to_dict() if sec == "target" else _section(recipe_dict, sec) for sec in s.sections}
    inputs["seed"], inputs["task"] = recipe.seed, recipe.task
    inputs["deps"] = {d: stages_m.get(d, {}).get("outputs") for d in s.deps}
    inputs["files"] = input_files(recipe, s.sections)
    return _io.sha256_json(inputs)


def _section(recipe_dict: dict, dotted: str):
    """A recipe section's values, or one key's (``distill.device``)."""
    value = recipe_dict
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _unchanged(prev: dict, inputs_hash: str, run_dir: Path) -> bool:
    return prev.get("status") == "done" and prev.get("inputs_hash") == inputs_hash \
        and _outputs_intact(run_dir, prev.get("outputs", {}))


def _nothing_to_run(run_dir: Path, recipe: Recipe, tgt: Target) -> bool:
    """True when every stage of an earlier run in ``run_dir`` is done with the same inputs and intact outputs."""
    stages_m = _read_manifest(run_dir / "manifest.json").get("stages", {})
    for s in STAGES.in_order():
        r = resolved_recipe(recipe, run_dir, s)
        if not _unchanged(stages_m.get(s.name, {}), _inputs_hash(s, r, r.to_dict(), tgt, stages_m), run_dir):
            return False
    return True


def _release_heap() -> None:
    """Hand the C heap's freed pages back to the OS between stages (glibc ``malloc_trim``): a stage that read
    many batches leaves its freed buffers in the allocator, and the next stage's peak would stand on them."""
    import gc

    from .. import _heap

    gc.collect()
    _heap.trim()


def input_files(recipe: Recipe, sections: tuple[str, ...]) -> dict[str, str]:
    """Content fingerprints of the user files a stage's sections name (``data.path``,
    ``teacher.checkpoint``, ``distill.teachers[].path``), so a file replaced under the same path
    re-runs the stage instead of being skipped as unchanged."""
    paths = []
    if "data" in sections and recipe.data.path:
        paths.append(recipe.data.path)
    if "teacher" in sections and recipe.teacher.checkpoint:
        paths.append(recipe.teacher.checkpoint)
    if "distill" in sections:
        paths += [t.path for t in recipe.distill.teachers if t.kind != "python"]
    found = {p: _path_fingerprint(Path(p)) for p in paths}
    if "distill" in sections:  # a Python teacher: its module's source file
        found.update({t.path: _module_fingerprint(t.path) for t in recipe.distill.teachers if t.kind == "python"})
    return found


def _module_fingerprint(spec: str) -> str:
    import importlib.util

    try:
        origin = importlib.util.find_spec(spec.split(":")[0]).origin
    except (ImportError, ValueError, AttributeError):
        return "missing"  # the distill stage says so, naming the key
    return _path_fingerprint(Path(origin)) if origin else "missing"


def _path_fingerprint(path: Path) -> str:
    """sha256 of a file's bytes; for a folder, of its files' relative paths, sizes and modification
    times (reading every image of a dataset folder on each run would cost more than the check saves)."""
    if path.is_file():
        return _io.sha256_file(path)
    if path.is_dir():  # hashed folder by folder in sorted order: memory holds one folder's names, not the tree's
        h = hashlib.sha256()
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                st = os.stat(os.path.join(root, name))
                h.update(f"{os.path.relpath(os.path.join(root, name), path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return "dir:" + h.hexdigest()
    return "missing"  # the stage that reads it says so, naming the key


def _read_manifest(path: Path) -> dict:
    import json

    if not path.exists():
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # a damaged manifest means: run everything again


def _outputs_intact(run_dir: Path, outputs: dict) -> bool:
    try:
        return bool(outputs) and all(_io.sha256_file(run_dir / p) == h for p, h in outputs.items())
    except OSError:
        return False
