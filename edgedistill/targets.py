"""Device targets: plain TOML data (budgets, threads, architecture, execution provider), no code.

``load_target`` takes a built-in name (``laptop-x86``) or a path to a user's own file; both go
through the same strict schema. This module imports no torch: boards run ``edgedistill bench``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from typing import Literal, Optional

from . import _schema
from ._schema import field
from ._ssh import check_ssh_options, parse_remote
from .errors import ConfigError


@dataclass
class Budgets:
    size_mb: float = field(20.0, gt=0.0, help="file size of the deliverable, MB (10^6 bytes)")
    p90_ms: Optional[float] = field(None, gt=0.0, help="90th-percentile latency of one inference")
    peak_ram_mb: Optional[float] = field(None, gt=0.0, help="peak resident memory of the benchmark process")
    min_metric: Optional[float] = field(None, help="lowest acceptable task metric (accuracy, Spearman...)")


@dataclass
class Target:
    name: str
    description: str = ""
    architecture: Literal["x86_64", "aarch64", "armv7l"] = "x86_64"
    cores: int = field(4, ge=1, le=1024)
    threads: int = field(1, ge=1, le=1024)
    ram_mb: Optional[float] = field(None, gt=0.0)
    execution_provider: Literal["CPUExecutionProvider", "XnnpackExecutionProvider", "NnapiExecutionProvider",
                                "CoreMLExecutionProvider", "CUDAExecutionProvider"] = "CPUExecutionProvider"
    runtime: Literal["onnxruntime", "litert", "both"] = field(
        "onnxruntime", help="the app's runtime: ONNX Runtime (.onnx), LiteRT (.tflite, the litert extra), or both, "
                            "measured side by side; the deliverable is chosen among the runtimes named")
    quant_format: Literal["QDQ", "QOperator"] = "QDQ"
    activation_type: Literal["int8", "uint8"] = "int8"
    budgets: Budgets = field(default_factory=Budgets)
    remote: Optional[str] = field(None, help="[USER@]HOST[:PORT] of the device: the bench runs there over SSH")
    ssh_options: list[str] = field(default_factory=list, help="KEY=VALUE options for `ssh -o`, e.g. IdentityFile=~/.ssh/pi")
    remote_python: str = field("python3", help="the command that starts python with edgedistill on the device")

    def _check(self, where: str) -> None:
        if self.threads > self.cores:
            raise ConfigError(f"threads: {self.threads} is more than the target's {self.cores} cores; lower it.")
        if self.remote is not None:
            parse_remote(self.remote, "remote")
        check_ssh_options(self.ssh_options, "ssh_options")
        if not self.remote_python.strip():
            raise ConfigError("remote_python: empty; name the device's python, e.g. python3 or ~/venv/bin/python.")

    @property
    def runtimes(self) -> tuple[str, ...]:
        """The runtimes the deliverable may be for (``runtime = "both"``: both)."""
        return ("onnxruntime", "litert") if self.runtime == "both" else (self.runtime,)

    def to_dict(self) -> dict:
        return _schema.to_dict(self)


def _builtin_dir():
    return resources.files("edgedistill").joinpath("target_profiles")


def list_targets() -> list[Target]:
    """The built-in targets, sorted by name."""
    out = []
    for entry in sorted(_builtin_dir().iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            out.append(_from_text(entry.read_text(), f"built-in target {entry.name}"))
    return out


def load_target(name_or_path: str) -> Target:
    """A built-in target by name, or a user's TOML file by path."""
    looks_like_path = name_or_path.endswith(".toml") or os.sep in name_or_path or os.path.exists(name_or_path)
    if looks_like_path:
        data = _schema.load_toml(name_or_path, "target file")
        try:
            return _schema.from_dict(Target, data, "")
        except ConfigError as e:
            raise ConfigError(f"{name_or_path}: {e}") from None
    entry = _builtin_dir().joinpath(f"{name_or_path}.toml")
    if not entry.is_file():
        names = ", ".join(t.name for t in list_targets())
        raise ConfigError(f"target {name_or_path!r} is unknown; choose one of: {names}, or pass a path to a .toml file.")
    return _from_text(entry.read_text(), f"built-in target {name_or_path}")


def _from_text(text: str, source: str) -> Target:
    try:
        return _schema.from_dict(Target, _schema.tomllib.loads(text), "")
    except ConfigError as e:  # pragma: no cover - built-ins are tested
        raise ConfigError(f"{source}: {e}") from None
