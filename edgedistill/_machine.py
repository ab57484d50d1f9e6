"""What machine a benchmark ran on: CPU model, cores, the ISA flags that decide INT8 speed, ORT version.

Stdlib + onnxruntime only (a board running ``edgedistill bench`` has no torch). Flags come from
``/proc/cpuinfo`` on Linux (x86 ``flags`` / ARM ``Features``) and ``sysctl`` on macOS; where a flag
cannot be read it is ``None`` (unknown), never guessed.
"""

from __future__ import annotations

import os
import platform
import subprocess

_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8l": "aarch64"}


def architecture() -> str:
    """The host architecture in the words targets use: x86_64, aarch64, armv7l."""
    m = platform.machine().lower()
    return _ARCH_ALIASES.get(m, m)


def cpu_count() -> int:
    """Cores this process may use (the affinity mask on Linux, else os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpuinfo() -> tuple[str | None, set[str]]:
    """(model name, lower-case flag set) from /proc/cpuinfo, or (None, empty) where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None, set()
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model is None and value.strip():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.lower().split())
    return model, flags


def _sysctl(name: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def int8_dot_exact(isa: dict | None = None) -> bool:
    """Whether ONNX Runtime's INT8 kernels compute a QDQ file's integer products exactly on this CPU (or on one with
    ``isa``) in a session without :data:`edgedistill.ort_session.PRECISE_INT8`: with AVX-512 VNNI, AVX-VNNI or Arm
    dot-product, yes; an x86 CPU without them runs U8S8 with VPMADDUBSW, whose 16-bit pair sums saturate (ONNX
    Runtime's quantization docs)."""
    isa = isa_flags() if isa is None else isa
    return bool(isa.get("avx512_vnni") or isa.get("avx_vnni") or isa.get("arm_dotprod"))


def isa_flags() -> dict:
    """AVX2, AVX-512 VNNI, AVX-VNNI and ARM dot-product support: True, False, or None when unknown."""
    arch = architecture()
    _, flags = _cpuinfo()
    isa: dict = {"avx2": None, "avx512_vnni": None, "avx_vnni": None, "arm_dotprod": None}
    if arch == "x86_64":
        if flags:
            isa.update(avx2="avx2" in flags, avx512_vnni="avx512_vnni" in flags, avx_vnni="avx_vnni" in flags)
        isa["arm_dotprod"] = False
    elif arch in ("aarch64", "armv7l"):
        isa.update(avx2=False, avx512_vnni=False, avx_vnni=False)
        if flags:
            isa["arm_dotprod"] = "asimddp" in flags
        elif platform.system() == "Darwin":  # Apple silicon: every M-series core has FEAT_DotProd
            v = _sysctl("hw.optional.arm.FEAT_DotProd")
            isa["arm_dotprod"] = None if v is None else v == "1"
    return isa


def cpu_model() -> str:
    model, _ = _cpuinfo()
    if model is None and platform.system() == "Darwin":
        model = _sysctl("machdep.cpu.brand_string")
    return model or platform.processor() or "unknown"


def machine_info() -> dict:
    """The ``machine`` block of the benchmark output contract."""
    import onnxruntime as ort

    return {
        "cpu": cpu_model(),
        "cores": cpu_count(),
        "architecture": architecture(),
        "isa": isa_flags(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
    }
