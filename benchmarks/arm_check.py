"""ARM parity under emulation: every model of each run folder given, run in an emulated aarch64 Debian (qemu-user
and a chroot) by ONNX Runtime on the run's own test samples, against x86 ONNX Runtime on the same inputs, once per
ARM core: ``cortex-a72`` (Raspberry Pi 4, no dot-product instructions) and ``cortex-a76`` (Raspberry Pi 5), which
pick the kernels ONNX Runtime will use on those boards. Inside, the torch-free package is installed and its
``inspect`` and ``bench`` commands are run on each bundle, so the light install is shown to work on ARM.

    make arm-check                                    # the demo run (runs/demo, made by `make demo` if missing)
    python benchmarks/arm_check.py runs/demo runs/fashion_mnist [--samples 256]

Needs root (chroot, mounts) and, the first time, the Debian mirror of this machine's apt sources and PyPI:
``qemu-user-static``, ``binfmt-support`` and ``debootstrap`` are installed with apt-get when missing; the
aarch64 root filesystem (about 330 MB, ~7 minutes) and the aarch64 wheels are kept in ``$EDGEDISTILL_ARM_CACHE``
(default ``~/.cache/edgedistill/arm64``) for the next runs. The host's ``/sys`` is never mounted into the chroot
(ONNX Runtime's cpuinfo reads x86 cache files there and crashes under emulation); ``/proc`` is.

Emulation is 60-400x slower than the boards: the times it gives are never latencies and are not recorded.
Agreement: an INT8 model must give the x86 outputs bit for bit or within one step of its output's quantization
scale; an FP32 model within 1e-4 of the largest x86 output (relative); top-1 agreement is reported for both.
Writes ``benchmarks/results/arm.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._provenance import stamp  # noqa: E402

CPUS = ("cortex-a72", "cortex-a76")
SUITE = "bookworm"
# pip's platform tags for a Debian bookworm aarch64 (glibc 2.36), newest first: a single older tag alone would
# silently resolve to an old ONNX Runtime
TAGS = [f"manylinux_2_{m}_aarch64" for m in range(36, 16, -1)] + ["manylinux2014_aarch64", "linux_aarch64"]
VENV = "/opt/edgedistill"
FP32_RTOL = 1e-4


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, **kw)


def fail(msg: str) -> None:
    sys.exit(f"arm-check: {msg}")


def host_tools() -> None:
    if os.geteuid() != 0:
        fail("needs root (debootstrap, chroot and the binfmt_misc mount); run it as root or with sudo.")
    missing = [p for p, exe in (("qemu-user-static", "qemu-aarch64-static"), ("binfmt-support", "update-binfmts"),
                                ("debootstrap", "debootstrap")) if not shutil.which(exe)]
    if missing:
        sh(["apt-get", "update", "-qq"])
        sh(["apt-get", "install", "-y", "-qq", *missing], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    misc = Path("/proc/sys/fs/binfmt_misc")
    if not (misc / "status").exists():
        sh(["mount", "-t", "binfmt_misc", "binfmt_misc", str(misc)])
    if not (misc / "qemu-aarch64").exists():
        sh(["update-binfmts", "--enable", "qemu-aarch64"])
    if "enabled" not in (misc / "qemu-aarch64").read_text():
        fail("the qemu-aarch64 binfmt handler is registered but disabled; run update-binfmts --enable qemu-aarch64.")


def mirror() -> str:
    """The Debian mirror this machine's apt sources name."""
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        text = f.read_text() if f.is_file() else ""
        m = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or re.search(r"^deb\s+(\S+/debian)\s", text, re.M)
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


def rootfs(cache: Path) -> Path:
    """The aarch64 Debian root filesystem, built once (debootstrap) and kept."""
    fs = cache / SUITE
    if (fs / ".edgedistill-ready").exists():
        return fs
    tmp = cache / f"{SUITE}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    sh(["debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
        SUITE, str(tmp), mirror()])
    (tmp / ".edgedistill-ready").write_text("debootstrap done\n")
    shutil.rmtree(fs, ignore_errors=True)
    tmp.rename(fs)
    return fs


def wheels(cache: Path) -> Path:
    """edgedistill's own wheel, built from this checkout, and the aarch64 wheels of its (torch-free) dependencies,
    resolved from that wheel's metadata (files already downloaded are kept)."""
    out = cache / "wheels"
    for old in out.glob("edgedistill-*.whl"):
        old.unlink()
    sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)])
    own = sorted(out.glob("edgedistill-*.whl"))[-1]
    tags = [a for t in TAGS for a in ("--platform", t)]
    sh([sys.executable, "-m", "pip", "download", "-q", "--dest", str(out), "--only-binary=:all:",
        "--python-version", "3.11", "--implementation", "cp", *tags, str(own)])
    return out


class Chroot:
    """The root filesystem with /proc mounted (never /sys), unmounted on exit."""

    def __init__(self, fs: Path) -> None:
        self.fs = fs

    def __enter__(self) -> "Chroot":
        sh(["mount", "-t", "proc", "proc", str(self.fs / "proc")])
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["umount", str(self.fs / "proc")])

    def run(self, args: list[str], cpu: str = "cortex-a76", **kw) -> subprocess.CompletedProcess:
        env = {"PATH": f"{VENV}/bin:/usr/bin:/bin", "HOME": "/root", "QEMU_CPU": cpu, "LC_ALL": "C.UTF-8"}
        return subprocess.run([shutil.which("chroot") or "/usr/sbin/chroot", str(self.fs), *args], env=env,
                              capture_output=True, text=True, **kw)


def install(ch: Chroot, whl: Path) -> dict:
    """The torch-free package in a venv inside the chroot with the one light-install line (`pip install
    edgedistill`), from the downloaded wheels only (no network)."""
    inside = ch.fs / "tmp" / "wheels"
    shutil.rmtree(inside, ignore_errors=True)
    shutil.copytree(whl, inside)
    own = sorted(inside.glob("edgedistill-*.whl"))[-1].name
    for args in (["python3", "-m", "venv", VENV],
                 [f"{VENV}/bin/pip", "install", "-q", "--no-index", "--find-links", "/tmp/wheels", f"/tmp/wheels/{own}"],
                 [f"{VENV}/bin/pip", "install", "-q", "--no-index", "--no-deps", "--force-reinstall",
                  f"/tmp/wheels/{own}"]):  # this checkout's code even when the version number did not change
        p = ch.run(args, timeout=3600)
        if p.returncode:
            fail(f"{' '.join(args)} failed in the aarch64 chroot: {p.stderr.strip()[-400:]}")
    torch = ch.run([f"{VENV}/bin/python", "-c", "import torch"])
    listed = ch.run([f"{VENV}/bin/pip", "list", "--format=freeze"]).stdout.split()
    return {"edgedistill_wheel": own, "torch_importable": torch.returncode == 0, "packages": listed}


def run_models(run: Path) -> dict[str, Path]:
    """The ONNX models of a run folder (every stage's) and the bundle's ORT-format file, by a short name."""
    from edgedistill.pipeline.stage import model_files
    from edgedistill.pipeline.runner import _load_stages

    _load_stages()
    found = {}
    for name, (s, m) in model_files().items():
        p = run / s.dir / m.file
        if p.exists():
            found[name] = p
    for f in ("model.onnx", "model.ort"):
        if (run / "bundle" / f).exists():
            found[f"bundle_{f}"] = run / "bundle" / f
    return found


def test_inputs(run: Path, n: int, names: set[str]) -> tuple[dict[str, np.ndarray], dict]:
    """The first ``n`` samples of the run's test split, as its recipe reads and preprocesses them, and what the
    recipe trained (name, epochs, training samples)."""
    from edgedistill.data import load_data
    from edgedistill.recipe import load_recipe

    recipe = load_recipe(str(run / "recipe.toml"))
    if recipe.task != "classification":
        fail(f"{run}: task {recipe.task!r}; the check feeds image / feature inputs, so it covers classification runs.")
    test = load_data(recipe.data, recipe.seed).test
    x = test.read(np.arange(min(n, len(test))))
    trained = {"name": recipe.name, "teacher_epochs": recipe.teacher.epochs, "distill_epochs": recipe.distill.epochs,
               "max_train_samples": recipe.data.max_train_samples}
    return {name: x for name in names}, trained


def output_step(path: Path) -> float | None:
    """The quantization scale of the model's first output when a DequantizeLinear produces it (an INT8 output
    step), else None."""
    import onnx
    from onnx import numpy_helper

    if path.suffix != ".onnx":
        return None
    g = onnx.load(str(path)).graph
    out = g.output[0].name
    inits = {i.name: i for i in g.initializer}
    for node in g.node:
        if node.output and node.output[0] == out and node.op_type == "DequantizeLinear" and node.input[1] in inits:
            return float(np.max(numpy_helper.to_array(inits[node.input[1]])))
    return None


def is_int8(path: Path) -> bool:
    import onnx

    model = path.with_suffix(".onnx") if path.suffix == ".ort" else path
    ops = {n.op_type for n in onnx.load(str(model)).graph.node}
    return bool(ops & {"QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "MatMulInteger", "ConvInteger"})


def compare(x86: np.ndarray, arm: np.ndarray, int8: bool, step: float | None) -> dict:
    diff = float(np.max(np.abs(x86.astype(np.float64) - arm))) if x86.size else 0.0
    scale = float(np.max(np.abs(x86))) or 1.0
    top1 = float(np.mean(x86.argmax(-1) == arm.argmax(-1))) if x86.ndim == 2 else None
    out = {"max_abs_diff": diff, "max_rel_diff": diff / scale, "bit_exact": bool(np.array_equal(x86, arm)),
           "top1_agreement": top1}
    if int8:
        out["output_step"] = step
        out["within_one_step"] = out["bit_exact"] or (step is not None and diff <= step * (1 + 1e-6))
        out["ok"] = out["within_one_step"] or (step is None and out["max_rel_diff"] <= FP32_RTOL)
    else:
        out["ok"] = out["max_rel_diff"] <= FP32_RTOL
    return out


def check_run(ch: Chroot, run: Path, n: int) -> dict:
    import onnxruntime as ort

    models = run_models(run)
    if not models:
        fail(f"{run}: no models found; finish the run first (edgedistill run --run-dir {run}).")
    work = Path(tempfile.mkdtemp(prefix="arm-", dir=ch.fs / "tmp"))
    try:
        names = set()
        for p in models.values():
            shutil.copy2(p, work / f"{p.parent.name}__{p.name}")
            names |= {i.name for i in ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).get_inputs()}
        inputs, trained = test_inputs(run, n, names)
        np.savez(work / "inputs.npz", **inputs)
        shutil.copy2(Path(__file__).with_name("arm_inner.py"), work / "arm_inner.py")
        inside = "/tmp/" + work.name
        result = {"run": str(run), "recipe": trained, "samples": int(next(iter(inputs.values())).shape[0]), "cpus": {}}
        reference = {name: _x86(path, inputs) for name, path in models.items()}  # once, for both cores
        for cpu in CPUS:
            p = ch.run([f"{VENV}/bin/python", f"{inside}/arm_inner.py", inside], cpu=cpu, timeout=3600)
            if p.returncode:
                fail(f"{run}: ONNX Runtime under QEMU_CPU={cpu} failed: {p.stderr.strip()[-400:]}")
            facts = json.loads(p.stdout.strip().splitlines()[-1])
            per_model = {}
            for name, path in models.items():
                x86, int8, step = reference[name]
                arm = np.load(work / f"{path.parent.name}__{path.name}.arm.npy")
                per_model[name] = {"file": str(path.relative_to(run)), "int8": int8, **compare(x86, arm, int8, step)}
            result["cpus"][cpu] = {"facts": facts, "models": per_model,
                                   "all_ok": all(m["ok"] for m in per_model.values())}
        result["cli"] = cli_inside(ch, work, inside, models)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _x86(path: Path, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, bool, float | None]:
    """This host's outputs of the model at ``path`` (ONNX Runtime, 1 thread), whether it is INT8, its output step."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: inputs[i.name] for i in sess.get_inputs()})[0], is_int8(path), output_step(path)


def cli_inside(ch: Chroot, work: Path, inside: str, models: dict[str, Path]) -> dict:
    """``edgedistill inspect`` and ``bench`` of the torch-free install, inside, on the bundle's model (exit codes and
    what they read; the times are emulated and not kept)."""
    bundle = models.get("bundle_model.onnx")
    if bundle is None:
        return {"skipped": "no bundle in the run"}
    model = f"{inside}/{bundle.parent.name}__{bundle.name}"
    out = {}
    for name, args in (("inspect", ["inspect", model, "--json"]),
                       ("bench", ["bench", model, "--runs", "5", "--min-seconds", "0", "--threads", "1", "--json"])):
        p = ch.run([f"{VENV}/bin/edgedistill", *args], timeout=1800)
        out[name] = {"exit_code": p.returncode, "stderr_tail": p.stderr.strip()[-300:] if p.returncode else ""}
        if name == "bench" and p.returncode == 0:
            machine = json.loads(p.stdout).get("machine", {})
            out[name]["machine_architecture"] = machine.get("architecture")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (finished edgedistill runs)")
    ap.add_argument("--samples", type=int, default=256, help="test samples per run")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "arm.json")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("arm-check: stopped (SIGTERM)"))  # unmount /proc on the way out
    cache = Path(os.environ.get("EDGEDISTILL_ARM_CACHE", Path.home() / ".cache" / "edgedistill" / "arm64"))
    host_tools()
    fs, whl = rootfs(cache), wheels(cache)
    qemu = subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    with Chroot(fs) as ch:
        installed = install(ch, whl)
        runs = [check_run(ch, run, args.samples) for run in args.runs]
    result = stamp({"what": __doc__.split("\n\n")[0].replace("\n", " "), "qemu": qemu, "debian": SUITE,
                    "install": installed, "runs": runs,
                    "all_ok": all(c["all_ok"] for r in runs for c in r["cpus"].values())}, argv)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for r in runs:
        for cpu, c in r["cpus"].items():
            print(f"{r['run']} {cpu}: " + ", ".join(f"{m} {'ok' if v['ok'] else 'DIFFERS'} (max diff {v['max_abs_diff']:.2g}"
                                                    f", top-1 {v['top1_agreement']})" for m, v in c["models"].items()))
    print(f"wrote {args.out}")
    sys.exit(0 if result["all_ok"] else 1)


if __name__ == "__main__":
    main()
