"""Scale benchmark: peak memory and time of `edgedistill run` as the data grows; lazy vs in-memory throughput.

Peak memory and wall time of whole `edgedistill run`s as the data set grows, and distillation
throughput of the lazy data layer against the old in-memory one.

Measured:

1. Memory (sections ``images`` and ``npy``): for each size (default 4k, 16k, 64k images) and each source
   (``image-folder`` PNGs in train/ test/ folders, ``npy`` uint8 .npy arrays holding the same pixels, read
   by the package a batch at a time), one `edgedistill run RECIPE --run-dir DIR` subprocess with tiny models (teacher cnn
   width 8 depth 2, student cnn width 4 depth 1, 1 epoch each, QAT off, 256 PTQ samples, a short
   bench). A monitor thread polls the process tree (the main process, its DataLoader workers and the
   per-model bench subprocesses) every 20 ms: the main process's RSS (and its kernel high-water mark
   VmHWM, anonymous vs file-backed RSS), the sum of RSS over the tree, and every 0.5 s the sum of PSS
   over the tree (PSS reads /proc/PID/smaps_rollup, ~7 ms per torch process: too dear for 20 ms on 2
   cores). Stage seconds come from the run's manifest.json, the distill samples/s from
   03_distill/meta.json. The goal: peak RSS of the 64k run within 1.3x of the 4k run.
2. Throughput (section ``throughput``): the same 4k images in one folder per class (hard links; the
   old code reads no train/ test/ folders) through the old in-memory code (commit 5a53845, a git
   worktree outside the repo, run as `PYTHONPATH=WORKTREE python -m edgedistill run`) and the new code,
   with its default recipe (``data.cache_decoded = "auto"``: decoded once per run, in DataLoader workers,
   into the run folder's ``data_cache/``, which starts empty every run) and with ``cache_decoded = false``
   (decoded at every read), and the same pixels as one x.npy (same order, so the same split) through the
   new code; teacher 3 epochs, distill 3 epochs; runs interleaved (old, new, new without cache, npy,
   old, ...). Compared: distill samples/s and teacher stage seconds per epoch, new/old (goal >= 0.9).
3. Text memory (section ``text``, only with ``--sources text-file``): as 1., for `edgedistill run` with
   ``task = "embedding"`` on a plain text file of N sentences (``dataset = "text-file"``, read a batch of
   lines at a time by byte offsets; validation / test: STS-B dev / test pairs): teacher all-MiniLM-L6-v2
   (pretrained, 0 epochs), student its layer 0 with the vocabulary pruned to the run's texts (both at most
   32 tokens a sentence), 1 distill epoch (simmat loss) with the teacher's embeddings cached (dense
   N x 384 fp32, held in RAM: it grows with N by design), QAT off, dynamic INT8 PTQ, a short bench. The
   section's ``notes`` say what grew. Not in the default --sources: 4k + 16k + 64k sentences take ~20 min.

Data (synthetic, learnable: class-dependent hue and grating orientation plus noise, 10 classes,
3 x 64 x 64 uint8) is generated once under --data-dir (outside the repo) with numpy + Pillow and
reused when present. The sentences are WordNet glosses and example sentences (Debian ``wordnet-base``,
deduplicated, seeded shuffle: N sentences are the first N of one order), written once per size to
``--data-dir/text-N.txt``. Run it on a quiet machine: before each run the script waits (up to --quiet-timeout)
until other processes use fewer than --quiet-cores cores, and it keeps, per run, the load average before
and after and the CPU time other processes took meanwhile (machine busy time minus the run's own).

4. Teacher cache (section ``cache``, ``--section cache``): a top-50 cache of 1,000 classes for 1 M and 10 M
   samples (``--cache-sizes``), each built in a fresh subprocess by ``distill.cache.load_or_build`` from a
   stand-in teacher that costs nothing (logits ``sin(position * f_c)``) over a SampleSet whose input is the
   sample's position (nothing held per sample), into a temporary folder deleted afterwards: peak RSS of the
   build (VmHWM), build time, file bytes, memory-mapped lookup time per batch of 256 random positions (mean of
   200), the RSS after the lookups, and every figure extrapolated linearly to 100 M samples (labelled so).

    python benchmarks/scale.py [--sizes 4000,16000,64000] [--sources image-folder,npy[,text-file]] \
        [--data-dir /tmp/edgedistill-scale] [--skip-baseline] [--out benchmarks/results/scale.json]
    python benchmarks/scale.py --section cache [--cache-sizes 1000000,10000000]

Sections of an existing --out file that this invocation does not measure (e.g. ``text``) are kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _provenance  # noqa: E402
from edgedistill import _io  # noqa: E402
from edgedistill._machine import machine_info  # noqa: E402
from edgedistill.errors import ConfigError  # noqa: E402

BASE_COMMIT = "5a53845"  # the last commit before the lazy data layer: everything loaded into RAM as float32
GEN_VERSION = 1  # bump when the generator changes: cached data is then regenerated
CHUNK = 1000  # images per generation chunk; image i depends only on (seed, i), whatever the size asked
CLASSES = 10
HW = 64
TEST_EVERY = 20  # (i // 10) % 20 < 3: 15 % of every class goes to test/
TEXT_VERSION = 1  # bump when the sentence selection changes: text-N.txt is then rewritten
SOURCES = ("image-folder", "npy", "text-file")
SECTION = {"image-folder": "images", "npy": "npy", "text-file": "text"}
UNIT = {"image-folder": "images", "npy": "images", "text-file": "sentences"}


# --- synthetic data ----------------------------------------------------------------------------------

def make_chunk(chunk: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``chunk*CHUNK .. +CHUNK`` as uint8 [N, 3, 64, 64] and their labels (i % 10).

    Class c: a hue at c * 36 degrees (amplitude 60 around grey, +- 20 per-image jitter per channel), a
    grating at c * 18 degrees (3-6 cycles, random phase, amplitude 45) and Gaussian noise (sd 30).
    """
    rng = np.random.default_rng([seed, chunk])
    idx = np.arange(chunk * CHUNK, (chunk + 1) * CHUNK)
    y = (idx % CLASSES).astype(np.int64)
    n = len(idx)
    hue = 2 * np.pi * y / CLASSES
    colour = 128 + 60 * np.stack([np.cos(hue), np.cos(hue - 2 * np.pi / 3), np.cos(hue + 2 * np.pi / 3)], 1)
    colour += rng.normal(0, 20, (n, 3))
    theta = np.pi * y / CLASSES + rng.normal(0, 0.05, n)
    freq = 3 + (y % 4) + rng.uniform(-0.3, 0.3, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    yy, xx = np.mgrid[0:HW, 0:HW] / HW
    proj = xx[None] * np.cos(theta)[:, None, None] + yy[None] * np.sin(theta)[:, None, None]
    grating = np.sin(2 * np.pi * freq[:, None, None] * proj + phase[:, None, None])
    img = colour[:, :, None, None] + 45 * grating[:, None] + rng.normal(0, 30, (n, 3, HW, HW))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), y


def is_test(i: np.ndarray | int):
    return (np.asarray(i) // CLASSES) % TEST_EVERY < 3


def _png_name(i: int) -> str:
    return f"{i:06d}.png"


def _write_png_chunk(args: tuple[Path, int, int]) -> int:
    """Encode one chunk into the pool (write to .tmp, then rename: an interrupted run leaves no half file)."""
    from PIL import Image

    pool, chunk, seed = args
    x, _ = make_chunk(chunk, seed)
    for j in range(len(x)):
        final = pool / _png_name(chunk * CHUNK + j)
        if final.exists():
            continue
        tmp = final.with_suffix(".tmp")
        Image.fromarray(np.ascontiguousarray(x[j].transpose(1, 2, 0))).save(tmp, format="PNG")
        os.replace(tmp, final)
    return chunk


def _marker_ok(folder: Path, spec: dict) -> bool:
    m = folder / ".complete.json"
    return m.exists() and json.loads(m.read_text()) == spec


def _finish(tmp: Path, folder: Path, spec: dict) -> None:
    (tmp / ".complete.json").write_text(json.dumps(spec))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def ensure_pool(data_dir: Path, n: int, seed: int, log) -> Path:
    """PNG files for images 0..n-1 (generated with 2 processes where missing); the size folders hard-link them."""
    pool = data_dir / f"pool-v{GEN_VERSION}-seed{seed}"
    pool.mkdir(parents=True, exist_ok=True)
    chunks = [c for c in range(math.ceil(n / CHUNK))
              if not all((pool / _png_name(i)).exists() for i in range(c * CHUNK, (c + 1) * CHUNK))]
    if chunks:
        t0 = time.perf_counter()
        with multiprocessing.get_context("fork").Pool(2) as p:
            for _ in p.imap_unordered(_write_png_chunk, [(pool, c, seed) for c in chunks]):
                pass
        log(f"generated {len(chunks) * CHUNK} PNGs in {time.perf_counter() - t0:.0f}s")
    return pool


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def ensure_image_folder(data_dir: Path, n: int, seed: int, flat: bool, log) -> Path:
    """``images-N/{train,test}/cK/*.png`` (or ``images-N-flat/cK/*.png``, no split folders)."""
    folder = data_dir / (f"images-{n}" + ("-flat" if flat else ""))
    spec = {"version": GEN_VERSION, "seed": seed, "n": n, "flat": flat}
    if _marker_ok(folder, spec):
        return folder
    pool = ensure_pool(data_dir, n, seed, log)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for i in range(n):
        sub = tmp / ("" if flat else ("test" if is_test(i) else "train")) / f"c{i % CLASSES}"
        sub.mkdir(parents=True, exist_ok=True)
        _link(pool / _png_name(i), sub / _png_name(i))
    _finish(tmp, folder, spec)
    log(f"wrote {folder}")
    return folder


def ensure_npy(data_dir: Path, n: int, seed: int, flat: bool, log) -> Path:
    """``npy-N/{x,y}_{train,test}.npy`` (train/test as the image folders), or ``npy-N-flat/{x,y}.npy`` in the
    flat image folder's listing order (class, then file name), so a recipe split picks the same samples."""
    folder = data_dir / (f"npy-{n}" + ("-flat" if flat else ""))
    spec = {"version": GEN_VERSION, "seed": seed, "n": n, "flat": flat}
    if _marker_ok(folder, spec):
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    idx = np.arange(n)
    if flat:
        parts = {"": idx[np.lexsort((idx, idx % CLASSES))]}
    else:
        parts = {"_train": idx[~is_test(idx)], "_test": idx[is_test(idx)]}
    for suffix, order in parts.items():
        x = np.lib.format.open_memmap(tmp / f"x{suffix}.npy", mode="w+", dtype=np.uint8, shape=(len(order), 3, HW, HW))
        pos = np.empty(n, dtype=np.int64)
        pos[order] = np.arange(len(order))
        for c in range(math.ceil(n / CHUNK)):
            xc, _ = make_chunk(c, seed)
            ids = np.arange(c * CHUNK, min((c + 1) * CHUNK, n))
            keep = np.isin(ids, order)
            x[pos[ids[keep]]] = xc[:len(ids)][keep]
        x.flush()
        del x
        np.save(tmp / f"y{suffix}.npy", (order % CLASSES).astype(np.int64))
    _finish(tmp, folder, spec)
    log(f"wrote {folder}")
    return folder


def ensure_text(data_dir: Path, n: int, seed: int, log) -> Path:
    """``text-N.txt``: N distinct WordNet glosses / example sentences, one per line (the first N of one seeded
    order of all of them, so a smaller file is a prefix of a larger one); ``text-N.txt.complete.json`` marks
    it finished and is checked (settings and byte size) before the file is reused."""
    from edgedistill.text.corpus import WORDNET_DIR, wordnet_sentences

    path = data_dir / f"text-{n}.txt"
    marker = path.with_name(path.name + ".complete.json")
    spec = {"version": TEXT_VERSION, "seed": seed, "n": n, "source": f"edgedistill.text.corpus.wordnet_sentences({WORDNET_DIR})"}
    if path.is_file() and marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("spec") == spec and done.get("bytes") == path.stat().st_size:
            return path
    try:
        sentences = wordnet_sentences()
    except ConfigError as e:
        sys.exit(f"--sources text-file: {e}")
    if n > len(sentences):
        sys.exit(f"--sizes: {n} sentences asked, WordNet gives {len(sentences)} distinct ones; pass smaller sizes.")
    random.Random(seed).shuffle(sentences)
    text = "".join(s.replace("\n", " ") + "\n" for s in sentences[:n])
    _io.write_text(path, text)
    _io.write_json(marker, {"spec": spec, "bytes": path.stat().st_size,
                            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()})
    log(f"wrote {path} ({n} sentences, {path.stat().st_size / 1e6:.1f} MB)")
    return path


# --- measuring a run ---------------------------------------------------------------------------------

def _status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile, RssShmem of ``pid`` in kB ({} once it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError):
        return {}
    return out


def _pss_kb(pid: int) -> int | None:
    """Proportional set size of ``pid`` in kB, from /proc/PID/smaps_rollup (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, through /proc/PID/task/TID/children (no full /proc scan)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    return out


class TreeMonitor(threading.Thread):
    """Polls a process tree's memory until ``stop()``; peaks in MB, overall and per pipeline stage (the stage
    is the last ``[name] running...`` line the run has written to its log, ``startup`` before the first)."""

    def __init__(self, pid: int, interval: float = 0.02, pss_interval: float | None = 0.5,
                 log_path: Path | None = None) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.pss_interval = pid, interval, pss_interval
        self.log_path, self._log_pos, self._log_rest, self.stage = log_path, 0, "", "startup"
        self.by_stage: dict[str, dict[str, int]] = {}
        self._stop_event = threading.Event()
        self.samples = self.pss_samples = 0
        self.main_rss = self.main_hwm = self.main_anon = self.main_file = 0
        self.tree_rss = self.tree_pss = 0
        self.max_procs = 0
        self.pss_errors = 0

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def _follow_log(self) -> None:
        if self.log_path is None:
            return
        try:
            with open(self.log_path, errors="replace") as f:
                f.seek(self._log_pos)
                text = f.read()
                self._log_pos = f.tell()
        except OSError:
            return
        lines = (self._log_rest + text).split("\n")
        self._log_rest = lines.pop()
        for line in lines:
            line = line.strip()
            if line.startswith("[") and line.endswith("] running..."):
                self.stage = line[1:line.index("]")]

    def run(self) -> None:
        next_pss = 0.0
        while not self._stop_event.is_set():
            t = time.perf_counter()
            self._follow_log()
            st_peak = self.by_stage.setdefault(self.stage, {"main_rss": 0, "main_anon": 0, "main_file": 0,
                                                            "tree_rss": 0, "procs": 0})
            pids = _tree(self.pid)
            tree_rss = 0
            for p in pids:
                st = _status(p)
                if not st:
                    continue
                tree_rss += st.get("VmRSS", 0)
                if p == self.pid:
                    self.main_rss = max(self.main_rss, st.get("VmRSS", 0))
                    self.main_hwm = max(self.main_hwm, st.get("VmHWM", 0))
                    self.main_anon = max(self.main_anon, st.get("RssAnon", 0))
                    self.main_file = max(self.main_file, st.get("RssFile", 0))
                    for k, f in (("main_rss", "VmRSS"), ("main_anon", "RssAnon"), ("main_file", "RssFile")):
                        st_peak[k] = max(st_peak[k], st.get(f, 0))
            st_peak["tree_rss"] = max(st_peak["tree_rss"], tree_rss)
            st_peak["procs"] = max(st_peak["procs"], len(pids))
            self.tree_rss = max(self.tree_rss, tree_rss)
            self.max_procs = max(self.max_procs, len(pids))
            self.samples += 1
            if self.pss_interval and t >= next_pss:
                pss = 0
                for p in pids:
                    kb = _pss_kb(p)
                    if kb is None:
                        self.pss_errors += 1
                    else:
                        pss += kb
                self.tree_pss = max(self.tree_pss, pss)
                self.pss_samples += 1
                next_pss = t + self.pss_interval
            self._stop_event.wait(max(0.0, self.interval - (time.perf_counter() - t)))

    def result(self) -> dict:
        mb = lambda kb: round(kb / 1024, 1)  # noqa: E731
        out = {"main_peak_rss_mb": mb(self.main_rss), "main_vmhwm_mb": mb(self.main_hwm),
               "main_peak_rss_anon_mb": mb(self.main_anon), "main_peak_rss_file_mb": mb(self.main_file),
               "tree_peak_rss_sum_mb": mb(self.tree_rss), "tree_max_processes": self.max_procs,
               "polls": self.samples}
        if self.pss_interval:
            out.update(tree_peak_pss_sum_mb=mb(self.tree_pss), pss_polls=self.pss_samples)
        out["peaks_by_stage_mb"] = {  # main RSS / RssAnon / RssFile, tree RSS sum, most processes, while each stage ran
            name: {"main_rss": mb(v["main_rss"]), "main_anon": mb(v["main_anon"]), "main_file": mb(v["main_file"]),
                   "tree_rss_sum": mb(v["tree_rss"]), "processes": v["procs"]} for name, v in self.by_stage.items()}
        return out


def _cpu_busy_s() -> float:
    """Seconds of CPU time the whole machine has spent busy (not idle / iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(t) for t in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_cores: float, timeout: float, log) -> dict:
    """Wait (up to ``timeout`` s) until the machine's CPU use over 5 s is below ``max_cores`` cores: another
    user's tests would otherwise share the 2 cores with the run. Returns what was seen."""
    t0 = time.perf_counter()
    while True:
        b0 = _cpu_busy_s()
        time.sleep(5)
        busy = (_cpu_busy_s() - b0) / 5
        waited = time.perf_counter() - t0
        if max_cores <= 0 or busy < max_cores or waited >= timeout:
            if waited > 10:
                log(f"  waited {waited:.0f}s for a quiet machine (busy {busy:.2f} cores)")
            return {"busy_cores_before": round(busy, 2), "waited_s": round(waited), "quiet": busy < max_cores}


QUIET = {"max_cores": 0.0, "timeout": 0.0, "memory_timeout": 0.0}  # set from the command line


def run_pipeline(recipe: str, run_dir: Path, *, old_code: Path | None = None, pss: bool = True, log=print,
                 quiet_timeout: float | None = None, launch: Callable[[list[str]], list[str]] | None = None,
                 env_extra: dict | None = None) -> dict:
    """One `edgedistill run` subprocess, measured; the recipe is written beside the run folder. ``launch`` turns
    the edgedistill arguments into the command (a torchrun line); ``env_extra`` is added to its environment."""
    run_dir = Path(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # a run folder with a manifest would skip finished stages
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    recipe_path = run_dir.with_suffix(".toml")
    recipe_path.write_text(recipe)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONUNBUFFERED"] = "1"
    if old_code is not None:  # the worktree first on sys.path; cwd outside the repo (python -m puts cwd first)
        env["PYTHONPATH"] = str(old_code)
        cmd = [sys.executable, "-m", "edgedistill", "run", str(recipe_path), "--run-dir", str(run_dir)]
    elif launch is not None:
        cmd = launch(["run", str(recipe_path), "--run-dir", str(run_dir)])
    else:
        cmd = [str(Path(sys.executable).parent / "edgedistill"), "run", str(recipe_path), "--run-dir", str(run_dir)]
    env.update(env_extra or {})
    shown = (f"PYTHONPATH={old_code} " if old_code else "") + " ".join(f"{k}={v}" for k, v in (env_extra or {}).items()) \
        + (" " if env_extra else "") + " ".join(shlex.quote(c) for c in cmd)
    log(f"$ {shown}")
    quiet = wait_quiet(QUIET["max_cores"], QUIET["timeout"] if quiet_timeout is None else quiet_timeout, log)
    # the tree may change between runs (others work in it): the HEAD and the uncommitted paths at this run's start
    code_at_start = {"old_code": BASE_COMMIT} if old_code is not None else git_info()
    load_before = [round(v, 2) for v in os.getloadavg()]
    with open(run_dir.with_suffix(".log"), "w") as logf:
        busy0 = _cpu_busy_s()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=str(run_dir.parent), stdout=logf, stderr=subprocess.STDOUT)
        mon = TreeMonitor(proc.pid, pss_interval=0.5 if pss else None, log_path=run_dir.with_suffix(".log"))
        mon.start()
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        busy = _cpu_busy_s() - busy0
        mon.stop()
        if mon.samples == 0:  # the poller died (its traceback is above): no memory figure would be right
            sys.exit("the memory monitor took no sample; see the traceback above.")
        proc.returncode = os.waitstatus_to_exitcode(status)
    load_after = [round(v, 2) for v in os.getloadavg()]
    own = rusage.ru_utime + rusage.ru_stime  # the run and every descendant it reaped (workers, bench children)
    out = {"command": shown, "code_at_start": code_at_start, "exit_code": proc.returncode, "wall_s": round(wall, 1),
           "load_average_before": load_before, "load_average_after": load_after, **quiet,
           "cpu_s_run": round(own, 1),
           # machine busy time during the run minus the run's own: other users (and this script's poller)
           "cpu_s_others": round(max(0.0, busy - own), 1),
           "others_cores_mean": round(max(0.0, busy - own) / wall, 2), **mon.result(),
           # the kernel's own peak: max RSS of the main process and every descendant it reaped
           "kernel_ru_maxrss_mb": round(rusage.ru_maxrss / 1024, 1)}
    if proc.returncode not in (0, 3):  # 3: finished, a target budget missed
        tail = run_dir.with_suffix(".log").read_text(errors="replace").strip().splitlines()[-15:]
        out["error"] = "\n".join(tail)
        log(f"  FAILED (exit {proc.returncode}): {tail[-1] if tail else ''}")
        return out
    manifest = json.loads((run_dir / "manifest.json").read_text())
    out["stage_seconds"] = {k: v.get("seconds") for k, v in manifest["stages"].items()}
    out["pipeline_seconds"] = round(sum(v or 0 for v in out["stage_seconds"].values()), 1)
    distill = json.loads((run_dir / "03_distill" / "meta.json").read_text())
    out["distill_samples_per_s"] = distill.get("samples_per_s")
    out["distill_seconds"] = distill.get("seconds")
    out["processes"] = distill.get("processes", 1)
    try:
        metrics = json.loads((run_dir / "07_verify" / "metrics.json").read_text())["models"]
        out["test_accuracy"] = {k: round(m["metric"]["value"], 4) for k, m in metrics.items()}
    except (OSError, KeyError, TypeError, ValueError, AttributeError):  # the old code's layout may differ
        pass
    log(f"  exit {proc.returncode}, {wall:.0f}s, main peak RSS {out['main_peak_rss_mb']} MB, tree RSS sum "
        f"{out['tree_peak_rss_sum_mb']} MB, distill {out['distill_samples_per_s']} samples/s")
    return out


# --- recipes -----------------------------------------------------------------------------------------

def recipe_text(name: str, source: str, path: Path, *, teacher_epochs: int = 1, distill_epochs: int = 1,
                old: bool = False, cache_decoded: bool | None = None) -> str:
    """``cache_decoded`` None: the recipe leaves data.cache_decoded at its default ("auto")."""
    if source == "image-folder":
        cache = "" if cache_decoded is None else f"cache_decoded = {str(cache_decoded).lower()}\n"
        data = (f'dataset = "image-folder"\npath = "{path}"\noptions = {{ size = {HW}, mode = "RGB" }}\n' if old else
                f'dataset = "image-folder"\npath = "{path}"\n' + cache)
        pre = "" if old else f"\n[data.preprocess]\nsize = [{HW}, {HW}]\nchannels = \"RGB\"\n"
    else:  # same preprocessing as the images: x / 255, then the training split's per-channel mean / std
        data = f'dataset = "npy"\npath = "{path}"\n'
        pre = "\n[data.preprocess]\nscale = 0.00392156862745098\n"
    return f"""name = "{name}"
seed = 0

[data]
{data}test_fraction = 0.15
batch_size = 64
{pre}
[teacher]
arch = "cnn"
params = {{ width = 8, depth = 2 }}
epochs = {teacher_epochs}

[student]
arch = "cnn"
params = {{ width = 4, depth = 1 }}

[distill]
epochs = {distill_epochs}

[qat]
enabled = false

[ptq]
samples = 256

[bench]
runs = 20
warmup = 2
min_seconds = 0.2
"""


TEXT_MODEL = "all-MiniLM-L6-v2"  # teacher, and the student's source of layers and tokenizer
TEXT_DIM = 384  # its embedding size: the dense teacher cache is N x TEXT_DIM fp32


def text_recipe(name: str, path: Path) -> str:
    """The text-file embedding run: as examples/text_embedding.toml, with a small, fast teacher and student."""
    return f"""name = "{name}"
task = "embedding"
seed = 0

[data]
dataset = "text-file"
path = "{path}"
batch_size = 64

[teacher]
arch = "sentence-transformer"
params = {{ name = "{TEXT_MODEL}", max_seq_length = 32 }}
epochs = 0

[student]
arch = "transformer-layers"
params = {{ init = "{TEXT_MODEL}", layers = [0], max_seq_length = 32 }}
prune_vocab = true

[distill]
epochs = 1
lr = 1e-4
weight_decay = 0.01
scheduler = "linear"
warmup = 0.1
clip_grad_norm = 1.0
losses = [{{ name = "simmat" }}]
cache = true

[qat]
enabled = false

[ptq]
mode = "dynamic"

[bench]
seq_len = 32
runs = 20
warmup = 2
min_seconds = 0.2
"""


def source_data(source: str, data_dir: Path, n: int, seed: int, log) -> Path:
    """The data of ``n`` samples for ``source`` (generated once, reused)."""
    if source == "text-file":
        return ensure_text(data_dir, n, seed, log)
    return (ensure_image_folder if source == "image-folder" else ensure_npy)(data_dir, n, seed, False, log)


def source_recipe(source: str, name: str, path: Path) -> str:
    return text_recipe(name, path) if source == "text-file" else recipe_text(name, source, path)


def source_what(source: str, sizes: list[int]) -> str:
    counts = ", ".join(map(str, sizes))
    if source == "text-file":
        return (f"`edgedistill run` with task = 'embedding', dataset = 'text-file' at {counts} sentences (distinct "
                "WordNet glosses and example sentences, one per line, seeded sample): teacher sentence-transformer "
                f"{TEXT_MODEL} (pretrained, 0 epochs), student transformer-layers = its layer 0 (vocabulary pruned to the "
                "run's texts), both truncating at 32 tokens, distill 1 epoch (simmat loss, batch 64) on the teacher's "
                "cached embeddings, QAT off, "
                "dynamic INT8 PTQ, a short bench (seq_len 32); validation / test: STS-B dev / test pairs: peak memory "
                "of the process tree, stage seconds, distill samples/s")
    return (f"`edgedistill run` with dataset = {source!r} at {counts} synthetic 3x64x64 images "
            "(10 classes, 85/15 train/test): peak memory of the process tree, stage seconds, distill samples/s")


def text_notes(runs: dict, sizes: list[int]) -> str:
    """What grew with the number of sentences: the measured peaks (overall and per stage), the teacher cache's size
    and the pruned vocabulary's, and why (from reading the code)."""
    ok = [n for n in sizes if "error" not in runs[str(n)]]
    if len(ok) < 2:
        return "fewer than two sizes ran: nothing to compare."
    lo, hi = runs[str(ok[0])], runs[str(ok[-1])]
    stages = {k: round(hi["peaks_by_stage_mb"][k]["main_anon"] - v["main_anon"], 1)
              for k, v in lo["peaks_by_stage_mb"].items() if k in hi["peaks_by_stage_mb"]}
    grown = sorted(stages.items(), key=lambda kv: -kv[1])
    vmhwm = round(hi["main_vmhwm_mb"] - lo["main_vmhwm_mb"], 1)
    each = lambda key: ", ".join(f"{n}: {runs[str(n)].get(key)}" for n in ok)  # noqa: E731
    return (f"From {ok[0]} to {ok[-1]} sentences the main process's peak RSS (VmHWM) grew {vmhwm} MB "
            f"({vmhwm * 1e6 / (ok[-1] - ok[0]):.0f} bytes per added sentence); peak RssAnon by stage: "
            + ", ".join(f"{k} {v:+} MB" for k, v in grown)
            + (f" (the teacher stage reads no training sentence: its {stages['teacher']:+} MB is run-to-run noise)"
               if "teacher" in stages else "")
            + ". What grows with N, by design: (1) the teacher "
            f"cache, dense N x {TEXT_DIM} fp32 held in RAM through the distill stage (MB: {each('teacher_cache_mb')}); "
            "building it holds the per-batch arrays and their concatenation (2x the cache) and saving it writes the "
            ".npz into a BytesIO first (2.1x at the save's peak, measured alone), so the distill peak grows by about "
            "2x the cache; (2) the student's pruned vocabulary, the tokens the run's texts use (rows of "
            f"{TEXT_DIM} fp32: {each('student_vocab')}), held 4x while distilling (weights, gradient, two AdamW moments) "
            "and again in export / PTQ; bounded by the tokenizer's 30522. Nothing else keeps per-sentence data: the "
            "text file stays on disk (8-byte line offsets, an int64 row and label per sentence), vocabulary pruning "
            "streams the texts 4096 at a time, export / PTQ / verify / bench read a fixed number of samples or the "
            "STS-B pairs.")


# --- the three sections ------------------------------------------------------------------------------

def memory_section(source: str, sizes: list[int], data_dir: Path, seed: int, command: str, git: dict, log) -> dict:
    runs = {}
    for n in sizes:
        folder = source_data(source, data_dir, n, seed, log)
        name = f"scale-{SECTION[source]}-{n}"
        runs[str(n)] = {"data": str(folder), **run_pipeline(source_recipe(source, name, folder), data_dir / "runs" / name,
                                                            log=log, quiet_timeout=QUIET["memory_timeout"])}
        if source == "text-file":  # what grows with N: the dense teacher cache and the pruned student vocabulary
            r, run_dir = runs[str(n)], data_dir / "runs" / name
            r["data_mb"] = round(folder.stat().st_size / 1e6, 2)
            try:
                r["teacher_cache_mb"] = round(_io.read_json(run_dir / "03_distill" / "meta.json")["teacher_cache"]
                                              ["cache_bytes"] / 1e6, 1)
                student = _io.read_json(run_dir / "02_student" / "meta.json")
                r["student_vocab"], r["student_parameters"] = student["vocab"], student["parameters"]
            except (OSError, KeyError, TypeError, ValueError):  # a failed run: its error says why
                pass
    keys = ("main_vmhwm_mb", "main_peak_rss_mb", "main_peak_rss_anon_mb", "tree_peak_rss_sum_mb",
            "tree_peak_pss_sum_mb", "kernel_ru_maxrss_mb")
    ratios, base = {}, str(min(sizes))
    for n in sizes:
        if str(n) == base or "error" in runs[str(n)] or "error" in runs[base]:
            continue
        ratios[f"{n}/{base}"] = {k: round(runs[str(n)][k] / runs[base][k], 3) for k in keys if runs[base].get(k)}
    goal = None
    top = f"{max(sizes)}/{base}"
    if top in ratios:
        r = ratios[top]["main_vmhwm_mb"]
        goal = {"what": f"peak RSS of the main process (VmHWM) at {max(sizes)} {UNIT[source]} within 1.3x of {base}",
                "ratio": r, "met": r <= 1.3,
                "tree_pss_ratio": ratios[top].get("tree_peak_pss_sum_mb"),
                "tree_rss_sum_ratio": ratios[top].get("tree_peak_rss_sum_mb")}
    folder_n = {"image-folder": "images-N", "npy": "npy-N", "text-file": "text-N.txt"}[source]
    out = {
        "command": command, "git_commit": git,
        "what": source_what(source, sizes),
        "recipe": source_recipe(source, f"scale-{SECTION[source]}-N", data_dir / folder_n),
        "memory_method": {
            "poll_interval_s": 0.02, "main_peak_rss_mb": "largest VmRSS of the `edgedistill` process seen by the poll",
            "main_vmhwm_mb": "the kernel's high-water mark of that process's RSS (VmHWM), last read before exit",
            "main_peak_rss_anon_mb / _file_mb": "largest RssAnon / RssFile (file-backed, e.g. memory-mapped .npy pages "
                                                "and shared libraries): file pages are reclaimable page cache",
            "tree_peak_rss_sum_mb": "largest sum of VmRSS over the main process, DataLoader workers and bench "
                                    "subprocesses (counts shared pages once per process: an over-estimate)",
            "tree_peak_pss_sum_mb": "largest sum of PSS (Pss of /proc/PID/smaps_rollup) over the tree, sampled every "
                                    "0.5 s only (smaps_rollup costs ~7 ms per torch process): may miss short peaks",
            "kernel_ru_maxrss_mb": "ru_maxrss from wait4: the largest peak RSS of the main process or any descendant"},
        "runs": runs, "ratios": ratios, "goal_64k_within_1.3x_of_4k": goal,
    }
    if source == "text-file":
        out["notes"] = text_notes(runs, sizes)
    return out


def git_info() -> dict:
    head, _ = _provenance.git_commit()
    status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True).stdout
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    # what the package's uncommitted state was, in one hash (tracked diff + untracked files' contents)
    h = hashlib.sha256(subprocess.run(["git", "-C", str(ROOT), "diff", "HEAD", "--", "edgedistill"],
                                      capture_output=True).stdout)
    for path in sorted(c for c in changed if c.startswith("edgedistill/")):
        f = ROOT / path
        for g in sorted(f.rglob("*.py")) if f.is_dir() else [f]:
            if g.is_file() and "__pycache__" not in g.parts:
                h.update(str(g.relative_to(ROOT)).encode() + g.read_bytes())
    return {"head": head, "dirty": bool(changed), "changed_paths": changed[:50],
            "package_state_sha256": h.hexdigest()[:16]}


def throughput_section(n: int, repeats: int, data_dir: Path, seed: int, command: str, git: dict, log) -> dict:
    images = ensure_image_folder(data_dir, n, seed, True, log)
    arrays = ensure_npy(data_dir, n, seed, True, log)
    wt = Path("/tmp/edgedistill-base")
    if wt.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], check=False)
        shutil.rmtree(wt, ignore_errors=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(wt), BASE_COMMIT], check=True,
                   capture_output=True)
    base_sha = subprocess.run(["git", "-C", str(wt), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    probe = subprocess.run([sys.executable, "-c", "import edgedistill; print(edgedistill.__file__)"], cwd="/",
                           env={**os.environ, "PYTHONPATH": str(wt)}, capture_output=True, text=True).stdout.strip()
    if not probe.startswith(str(wt)):
        sys.exit(f"the old code is not the one imported with PYTHONPATH={wt} ({probe}); cannot compare.")
    te, de = 3, 3
    variants = {
        "old_in_memory_image_folder": (recipe_text("tp-old", "image-folder", images, teacher_epochs=te, distill_epochs=de,
                                                   old=True), wt),
        # the default, data.cache_decoded = "auto": decoded once per run into the run folder's data_cache/ (each run
        # starts from an empty run folder, so every run pays that pass, in its teacher stage)
        "new_image_folder_default": (recipe_text("tp-new", "image-folder", images, teacher_epochs=te, distill_epochs=de), None),
        "new_image_folder_decode_every_read": (recipe_text("tp-nocache", "image-folder", images, teacher_epochs=te,
                                                           distill_epochs=de, cache_decoded=False), None),
        "new_lazy_npy": (recipe_text("tp-npy", "npy", arrays, teacher_epochs=te, distill_epochs=de), None),
    }
    runs = []
    try:
        for rep in range(repeats):
            for name, (recipe, code) in variants.items():
                r = run_pipeline(recipe, data_dir / "runs" / f"tp-{name}", old_code=code, pss=False, log=log)
                if "stage_seconds" in r:
                    r["teacher_s_per_epoch"] = round(r["stage_seconds"]["teacher"] / te, 2)
                runs.append({"variant": name, "repeat": rep, **r})
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], check=False)
    summary = {}
    for name in variants:
        ok = [r for r in runs if r["variant"] == name and "error" not in r]
        if not ok:
            summary[name] = {"runs_ok": 0}
            continue
        med = lambda k: round(statistics.median(r[k] for r in ok), 2)  # noqa: E731
        summary[name] = {"runs_ok": len(ok), "distill_samples_per_s_median": med("distill_samples_per_s"),
                         "distill_samples_per_s_all": [r["distill_samples_per_s"] for r in ok],
                         "teacher_s_per_epoch_median": med("teacher_s_per_epoch"),
                         "teacher_s_per_epoch_all": [r["teacher_s_per_epoch"] for r in ok],
                         "pipeline_seconds_median": med("pipeline_seconds"),
                         "wall_s_median": med("wall_s"), "wall_s_all": [r["wall_s"] for r in ok],
                         "main_vmhwm_mb_median": med("main_vmhwm_mb"), "tree_peak_rss_sum_mb_median": med("tree_peak_rss_sum_mb"),
                         "load_average_before_all": [r["load_average_before"][0] for r in ok],
                         "others_cores_all": [r["others_cores_mean"] for r in ok]}
    ratios = {}
    old = summary["old_in_memory_image_folder"]
    for name in ("new_image_folder_default", "new_image_folder_decode_every_read", "new_lazy_npy"):
        new = summary[name]
        if old.get("runs_ok") and new.get("runs_ok"):
            ratios[f"{name} / old"] = {
                "distill_samples_per_s": round(new["distill_samples_per_s_median"] / old["distill_samples_per_s_median"], 3),
                # seconds per epoch: old / new is the speed ratio (>= 0.9 is the goal, as for samples/s)
                "teacher_epoch_speed": round(old["teacher_s_per_epoch_median"] / new["teacher_s_per_epoch_median"], 3),
                # the whole command, start to exit: the old code decoded its images before the first stage, the
                # new one in the teacher stage, so only this compares the one-off decoding fairly
                "whole_run_speed": round(old["wall_s_median"] / new["wall_s_median"], 3),
                "main_vmhwm": round(new["main_vmhwm_mb_median"] / old["main_vmhwm_mb_median"], 3)}
    key = "new_image_folder_default / old"
    goal = None
    if key in ratios:
        goal = {"what": "new image-folder speed with the default recipe / old (distill samples/s, teacher epochs/s, "
                        "whole run) >= 0.9",
                "distill_met": ratios[key]["distill_samples_per_s"] >= 0.9,
                "teacher_met": ratios[key]["teacher_epoch_speed"] >= 0.9,
                "whole_run_met": ratios[key]["whole_run_speed"] >= 0.9}
        return {
        "command": command, "git_commit": git,
        "what": (f"{n} images (one folder per class, the recipe's split: 15 % test, 10 % val) through the old "
                 f"in-memory code ({BASE_COMMIT}) and the new code: its default (data.cache_decoded = \"auto\": decoded once "
                 f"per run into the run folder), decoding at every read (cache_decoded = false), and the same pixels "
                 f"as one x.npy; teacher {te} epochs, distill {de} epochs, runs interleaved, medians"),
        "old_code": {"commit": base_sha, "worktree": str(wt), "imported_from": probe},
        "teacher_s_per_epoch": "manifest stages.teacher.seconds / epochs: includes the stage's one-off work (old: "
                               "decoding every image into RAM; new: listing files, the streaming mean/std pass and, by default, the "
                               "one decoding pass into data_cache/) and "
                               "its test-split evaluation",
        "memory_method": "as the images section, without the PSS sampling (kept off so it costs no CPU while timing)",
        "recipes": {k: v[0] for k, v in variants.items()},
        "runs": runs, "summary": summary, "ratios": ratios, "goal_new_over_old_ge_0.9": goal,
    }


# --- one process against two (section ``processes``) ----------------------------------------------------

def _torchrun(*options: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *options, "-m", "edgedistill"]


def _two_machines(args: list[str]) -> list[str]:
    """Two torchrun invocations, one process each, joined by a c10d rendezvous on 127.0.0.1, as two machines would
    be started (each with the same command); the exit status is non-zero if either fails."""
    port = 29400 + random.randrange(500)
    one = " ".join(shlex.quote(c) for c in _torchrun("--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
                                                     "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "scale") + args)
    return ["bash", "-c", f"{one} & a=$!; {one} & b=$!; wait $a; ra=$?; wait $b; rb=$?; exit $(( ra | rb ))"]


def processes_section(n: int, repeats: int, data_dir: Path, seed: int, command: str, git: dict, log) -> dict:
    arrays = ensure_npy(data_dir, n, seed, True, log)
    te, de = 1, 3
    recipe = recipe_text("procs", "npy", arrays, teacher_epochs=te, distill_epochs=de)
    variants = {
        "1_process": None,
        "2_processes": lambda args: _torchrun("--standalone", "--nproc_per_node", "2") + args,
        "2_machines_x_1_process": _two_machines,
    }
    runs = []
    for rep in range(repeats):
        for name, launch in variants.items():
            r = run_pipeline(recipe, data_dir / "runs" / f"procs-{name}", pss=False, log=log, launch=launch,
                             env_extra={"OMP_NUM_THREADS": "1"})
            runs.append({"variant": name, "repeat": rep, **r})
    summary = {}
    for name in variants:
        ok = [r for r in runs if r["variant"] == name and "error" not in r]
        summary[name] = {"runs_ok": len(ok)}
        if ok:
            summary[name].update(
                distill_samples_per_s_median=round(statistics.median(r["distill_samples_per_s"] for r in ok), 1),
                distill_samples_per_s_all=[r["distill_samples_per_s"] for r in ok],
                processes=sorted({r["processes"] for r in ok}),
                wall_s_all=[r["wall_s"] for r in ok], test_accuracy=[r.get("test_accuracy") for r in ok],
                load_average_before_all=[r["load_average_before"][0] for r in ok])
    one = summary["1_process"].get("distill_samples_per_s_median")
    ratios = {f"{name} / 1_process": round(summary[name]["distill_samples_per_s_median"] / one, 3)
              for name in variants if name != "1_process" and one and summary[name]["runs_ok"]}
    return {
        "command": command, "git_commit": git,
        "what": (f"the distill stage's samples/s (03_distill/meta.json: samples over the stage's training seconds, "
                 f"validation included) of `edgedistill run` on {n} 64x64 RGB images (npy) with 1 process, with 2 "
                 f"processes (torchrun --standalone --nproc_per_node 2, gloo) and with two torchrun invocations of "
                 f"one process each joined by --nnodes 2 and a c10d rendezvous on 127.0.0.1 (two 'machines'); "
                 f"OMP_NUM_THREADS=1 in every process, the same recipe and data, global batch 64 (32 per rank), "
                 f"teacher {te} epoch, distill {de} epochs, runs interleaved, medians"),
        "recipe": recipe, "runs": runs, "summary": summary, "ratios_distill_samples_per_s": ratios,
    }


# --- the teacher cache at scale (section ``cache``) ----------------------------------------------------

CACHE_CLASSES, CACHE_K, CACHE_BUILD_BATCH, LOOKUP_BATCH, LOOKUPS = 1000, 50, 1024, 256, 200


def _proc_status() -> dict[str, float]:
    """This process's VmRSS, VmHWM, RssAnon, RssFile in MB."""
    return {k: round(v / 1024, 1) for k, v in _status(os.getpid()).items() if k != "RssShmem"}


def _reset_hwm() -> bool:
    """Reset this process's VmHWM to its current RSS (``5`` > /proc/self/clear_refs, Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _positions_set(n: int):
    """A SampleSet of ``n`` samples whose input is its own position (one float): nothing held per sample (the
    labels are one broadcast -1), so the inputs cost no memory and the cache is what is measured."""
    from edgedistill.data import Preprocess, SampleSet

    class Positions(SampleSet):
        input_shape, preprocess = (1,), Preprocess()

        def __init__(self) -> None:
            self.y = np.broadcast_to(np.int64(-1), (n,))

        def _read(self, idx):
            return idx.astype(np.float32)[:, None]

        def where(self, i):
            return f"position {i}"

        def _fingerprint(self):
            return f"positions:{n}"

    return Positions()


def _stand_in_teacher():
    """Logits that cost almost nothing and differ per sample: ``sin(position * f_c)`` for fixed frequencies."""
    import torch

    freq = torch.rand(CACHE_CLASSES, generator=torch.Generator().manual_seed(0)) * 0.37 + 0.01
    return lambda xb: {"logits": torch.sin(xb * freq[None, :])}


def cache_worker(n: int, folder: Path) -> dict:
    """One size, in its own (fresh) process: build the cache, then time memory-mapped lookups; peaks from
    /proc/self/status (VmHWM reset between the phases)."""
    import torch

    from edgedistill.distill.cache import load_or_build

    torch.set_num_threads(1)
    split, teacher = _positions_set(n), _stand_in_teacher()
    before = _proc_status()
    _reset_hwm()
    t0 = time.perf_counter()
    cache, hit = load_or_build(folder, teacher, "stand-in", split, {}, temperature=4.0, k=CACHE_K,
                               batch_size=CACHE_BUILD_BATCH)
    build_s = time.perf_counter() - t0
    after_build = _proc_status()
    files = sorted(cache.folder.iterdir())
    rng = np.random.default_rng(0)
    hwm_reset = _reset_hwm()
    times = {"rows": [], "rows_again": [], "teacher_outputs": []}
    for _ in range(LOOKUPS):
        idx = torch.from_numpy(rng.integers(0, n, LOOKUP_BATCH))
        for what, fn in (("rows", cache.rows), ("rows_again", cache.rows), ("teacher_outputs", cache.teacher_outputs)):
            t = time.perf_counter()
            fn(idx)
            times[what].append(time.perf_counter() - t)
    after_lookups = _proc_status()
    return {"samples": n, "hit": hit, "shards": cache.num_shards, "build_s": round(build_s, 1),
            "build_samples_per_s": round(n / build_s), "rss_before_build_mb": before["VmRSS"],
            "build_peak_rss_vmhwm_mb": after_build["VmHWM"], "rss_after_build_mb": after_build["VmRSS"],
            "file_bytes": sum(f.stat().st_size for f in files), "files": len(files),
            "array_bytes": cache.nbytes, "report": cache.report(),
            "lookup_ms_per_batch_rows_mean": round(1e3 * statistics.mean(times["rows"]), 3),
            "lookup_ms_per_batch_rows_median": round(1e3 * statistics.median(times["rows"]), 3),
            "lookup_ms_per_batch_rows_again_mean": round(1e3 * statistics.mean(times["rows_again"]), 3),
            "lookup_ms_per_batch_teacher_outputs_mean": round(1e3 * statistics.mean(times["teacher_outputs"]), 3),
            "lookup_peak_rss_vmhwm_mb": after_lookups["VmHWM"] if hwm_reset else None,
            "rss_after_lookups_mb": after_lookups["VmRSS"], "rss_file_after_lookups_mb": after_lookups["RssFile"]}


def _extrapolate(small: dict, big: dict, to: int) -> dict:
    """Each figure on the line through the two measured sizes, at ``to`` samples (an extrapolation)."""
    keys = ("build_s", "build_peak_rss_vmhwm_mb", "file_bytes", "lookup_ms_per_batch_rows_mean",
            "lookup_ms_per_batch_teacher_outputs_mean", "lookup_peak_rss_vmhwm_mb", "rss_after_lookups_mb")
    out = {}
    for k in keys:
        if small.get(k) is None or big.get(k) is None:
            continue
        slope = (big[k] - small[k]) / (big["samples"] - small["samples"])
        out[k] = round(big[k] + slope * (to - big["samples"]), 3)
        if "rss" in k:  # a memory figure that fell between the sizes (noise) is not extrapolated below what was seen
            out[k] = max(out[k], small[k], big[k])
    return out


def cache_section(sizes: list[int], command: str, git: dict, log) -> dict:
    """Section ``cache``: a top-50 cache of 1,000 classes built for each size in a fresh subprocess."""
    usage = shutil.disk_usage(tempfile.gettempdir())
    need = max(sizes) * (CACHE_K * 4 + 4) * 1.1
    if usage.free < 2 * need:
        sys.exit(f"--section cache: {usage.free / 1e9:.1f} GB free in {tempfile.gettempdir()}, {need / 1e9:.1f} GB needed")
    runs = {}
    for n in sizes:
        tmp = Path(tempfile.mkdtemp(prefix=f"edgedistill-cache-{n}-"))
        try:
            loadavg = Path("/proc/loadavg").read_text().split()[:3]
            proc = subprocess.run([sys.executable, __file__, "--cache-worker", str(n), str(tmp)], capture_output=True,
                                  text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if proc.returncode:
                runs[str(n)] = {"error": proc.stderr[-2000:], "exit_code": proc.returncode}
                continue
            runs[str(n)] = {**json.loads(proc.stdout.strip().splitlines()[-1]), "load_average_before": loadavg,
                            "load_average_after": Path("/proc/loadavg").read_text().split()[:3]}
            log(f"cache {n}: {runs[str(n)]['build_s']}s, peak {runs[str(n)]['build_peak_rss_vmhwm_mb']} MB")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    ok = [runs[str(n)] for n in sizes if "error" not in runs[str(n)]]
    return {"command": command, "git_commit": git, "what": CACHE_WHAT, "runs": runs,
            "extrapolated_to_100M_linear": (_extrapolate(ok[0], ok[-1], 100_000_000) if len(ok) > 1 else None),
            "peak_rss_ratio_largest_over_smallest": (round(ok[-1]["build_peak_rss_vmhwm_mb"]
                                                           / ok[0]["build_peak_rss_vmhwm_mb"], 3) if len(ok) > 1 else None)}


CACHE_WHAT = (
    f"edgedistill.distill.cache.load_or_build: top-{CACHE_K} of {CACHE_CLASSES} classes (fp16 probabilities, int16 "
    "indices, fp32 fingerprints) in shards of 1,048,576 samples, memory-mapped .npy files, in a temporary folder "
    "deleted afterwards; each size in a fresh `python benchmarks/scale.py --cache-worker N DIR` subprocess, "
    "torch.set_num_threads(1). Data: a SampleSet whose input is the sample's position as one float32 (nothing held "
    "per sample; labels one broadcast -1). Teacher: a stand-in costing ~nothing, logits sin(position * f_c) for "
    f"{CACHE_CLASSES} fixed frequencies. Build batch {CACHE_BUILD_BATCH}. Memory: VmHWM / VmRSS / RssFile from "
    "/proc/self/status, VmHWM reset (/proc/self/clear_refs) before the build and before the lookups, so "
    "build_peak_rss_vmhwm_mb includes the interpreter + torch baseline (rss_before_build_mb). Lookups: "
    f"{LOOKUPS} batches of {LOOKUP_BATCH} uniformly random positions right after the build (positioned reads, "
    "os.preadv, one per run of consecutive rows): `rows` reads the stored rows only, the first read of the batch (on "
    "this VM the kernel had not kept all the just-written pages in its page cache, so part of it comes from disk); "
    "`rows_again` reads the same rows again at once (page cache warm); `teacher_outputs` (third) also rebuilds the "
    "1,000-class logits. extrapolated_to_100M_linear: "
    "each figure on the line through the smallest and largest measured sizes, at 100 M samples (not measured); a "
    "memory figure whose line falls is given as the largest measured instead."
)


# --- output ------------------------------------------------------------------------------------------

def table(result: dict) -> str:
    lines = ["| source | images / sentences | main peak RSS (VmHWM) MB | main RssAnon MB | tree RSS sum MB | tree PSS sum MB | "
             "pipeline s | distill samples/s | load avg before -> after | others' cores |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for sec in SECTION.values():
        for n, r in (result.get(sec) or {}).get("runs", {}).items():
            if "error" in r:
                lines.append(f"| {sec} | {n} | failed (exit {r['exit_code']}) | | | | | | | |")
                continue
            lines.append(f"| {sec} | {n} | {r['main_vmhwm_mb']} | {r['main_peak_rss_anon_mb']} | {r['tree_peak_rss_sum_mb']} "
                         f"| {r.get('tree_peak_pss_sum_mb', '')} | {r['pipeline_seconds']} | {r['distill_samples_per_s']} | "
                         f"{r['load_average_before'][0]} -> {r['load_average_after'][0]} | {r['others_cores_mean']} |")
    for sec in SECTION.values():
        for k, v in (result.get(sec) or {}).get("ratios", {}).items():
            lines.append(f"\n{sec} {k}: main VmHWM x{v.get('main_vmhwm_mb')}, RssAnon x{v.get('main_peak_rss_anon_mb')}, "
                         f"tree RSS x{v.get('tree_peak_rss_sum_mb')}, tree PSS x{v.get('tree_peak_pss_sum_mb')}")
    tp = result.get("throughput")
    if tp:
        lines += ["", "| variant (4k images) | runs | distill samples/s (median; all) | teacher s/epoch (median; all) | "
                  "main VmHWM MB | load avg (1 min) before each | others' cores each |", "|---|---:|---:|---:|---:|---|---|"]
        for name, s in tp["summary"].items():
            if not s.get("runs_ok"):
                lines.append(f"| {name} | 0 | failed | | | | |")
                continue
            lines.append(f"| {name} | {s['runs_ok']} | {s['distill_samples_per_s_median']} ({s['distill_samples_per_s_all']}) | "
                         f"{s['teacher_s_per_epoch_median']} ({s['teacher_s_per_epoch_all']}) | {s['main_vmhwm_mb_median']} | "
                         f"{s['load_average_before_all']} | {s['others_cores_all']} |")
        for k, v in tp["ratios"].items():
            lines.append(f"\n{k}: distill samples/s x{v['distill_samples_per_s']}, teacher epoch speed "
                         f"x{v['teacher_epoch_speed']}, main VmHWM x{v['main_vmhwm']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4000,16000,64000", help="comma-separated image / sentence counts")
    ap.add_argument("--sources", default="image-folder,npy",
                    help="comma-separated: image-folder, npy, text-file (the embedding task on N sentences)")
    ap.add_argument("--data-dir", default="/tmp/edgedistill-scale", help="generated data and run folders (outside the repo)")
    ap.add_argument("--skip-baseline", action="store_true", help="leave out the old-vs-new throughput comparison")
    ap.add_argument("--baseline-size", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs of each throughput variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet-cores", type=float, default=0.5,
                    help="before each run wait until other processes use fewer cores than this (0: do not wait)")
    ap.add_argument("--quiet-timeout", type=float, default=900,
                    help="longest wait for a quiet machine before each throughput run, s")
    ap.add_argument("--quiet-timeout-memory", type=float, default=120,
                    help="the same before each memory run (memory hardly depends on the load; its times do)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    ap.add_argument("--section", choices=("runs", "cache", "processes"), default="runs",
                    help="runs: the memory sections of --sources and the throughput comparison; cache: the teacher "
                         "cache at --cache-sizes samples; processes: the distill stage with 1 and 2 processes "
                         "(--baseline-size images, --repeats)")
    ap.add_argument("--cache-sizes", default="1000000,10000000", help="comma-separated sample counts (section cache)")
    ap.add_argument("--cache-worker", nargs=2, metavar=("N", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cache_worker:  # one size of the cache section, in a fresh process: its result as one JSON line
        print(json.dumps(cache_worker(int(args.cache_worker[0]), Path(args.cache_worker[1]))))
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    bad = [s for s in sources if s not in SOURCES]
    if bad:
        ap.error(f"--sources: unknown {bad}; choose from {', '.join(SOURCES)}")
    QUIET.update(max_cores=args.quiet_cores, timeout=args.quiet_timeout, memory_timeout=args.quiet_timeout_memory)
    data_dir = Path(args.data_dir).resolve()
    if data_dir == ROOT or ROOT in data_dir.parents:
        ap.error("--data-dir must be outside the repository")
    data_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log = lambda msg: print(f"[{time.time() - t0:6.0f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    command = _provenance.command()
    git = git_info()
    machine = {**machine_info(), "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}  # sections not measured now are kept
    result.update(command=command, git_commit=git, machine=machine)
    if args.section == "cache":
        sizes = sorted(int(s) for s in args.cache_sizes.split(","))
        result["cache"] = {**cache_section(sizes, command, git, log), "machine": machine,
                           "load_average_at_start": Path("/proc/loadavg").read_text().split()[:3]}
        _io.write_json(out, result)
        print(json.dumps({k: v for k, v in result["cache"].items() if k != "what"}, indent=1))
        log(f"wrote {out}")
        return
    if args.section == "processes":
        result["processes"] = {**processes_section(args.baseline_size, args.repeats, data_dir, args.seed, command, git,
                                                   log), "machine": machine}
        _io.write_json(out, result)
        print(json.dumps(result["processes"]["summary"], indent=1), json.dumps(result["processes"]["ratios_distill_samples_per_s"]))
        log(f"wrote {out}")
        return
    for source in sources:
        result[SECTION[source]] = memory_section(source, sizes, data_dir, args.seed, command, git, log)
        _io.write_json(out, result)
    if not args.skip_baseline:
        result["throughput"] = throughput_section(args.baseline_size, args.repeats, data_dir, args.seed, command, git, log)
        _io.write_json(out, result)
    print(table(result))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
