"""The light (torch-free) install, simulated in a subprocess: :func:`light_env` is an environment in which the
modules only the ``train`` extra installs (torch, onnxscript, scikit-learn, matplotlib, tqdm) cannot be found,
exactly as where they are not installed: ``import torch`` raises ModuleNotFoundError and
``importlib.util.find_spec("torch")`` is None (ONNX Runtime's tools ask that). ``tests/test_light_install.py``
also builds a real venv with the one pip line; this stand-in keeps the everyday tests fast."""

from __future__ import annotations

import os
from pathlib import Path

from edgedistill.errors import PIPELINE_MODULES

ROOT = Path(__file__).resolve().parents[1]

_SITECUSTOMIZE = '''\
import sys

HIDDEN = {hidden!r}


class _Hide:
    """A finder that never finds a hidden module, else asks the finder it wraps."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr):
        return getattr(self.finder, attr)


sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
'''


def light_env(folder: str | os.PathLike) -> dict:
    """Environment variables for a subprocess that sees no torch (nor the train extra's other modules), with this
    checkout and ``tests/`` importable."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(hidden=sorted(PIPELINE_MODULES)))
    return {"PYTHONPATH": os.pathsep.join(map(str, (folder, ROOT, ROOT / "tests"))), "PATH": "/usr/bin:/bin",
            "HOME": str(folder)}
