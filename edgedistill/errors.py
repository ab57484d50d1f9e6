"""The one error type users see: a sentence that names the file or key and what to do; how an OS error in
the middle of a run (a full disk, a read-only folder) becomes one; and the exit codes the CLI gives them."""

from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

EXIT_BUDGET_MISSED = 3  # the run (or `bench --target`) finished, but the deliverable misses a budget

#: the pip line that adds the training pipeline to the light (torch-free) package
PIPELINE_INSTALL = "pip install 'edgedistill[train]'"
#: the modules only the ``train`` extra installs: the light install has none of them
PIPELINE_MODULES = frozenset({"torch", "onnxscript", "sklearn", "matplotlib", "tqdm"})
_DISTRIBUTION = {"sklearn": "scikit-learn"}  # where the pip name is not the module's


class EdgeDistillError(Exception):
    """An expected failure with a message a user can act on (no traceback is shown for it)."""


class ConfigError(EdgeDistillError):
    """A recipe, target or other configuration value is wrong."""


class DataError(EdgeDistillError):
    """Input data is missing, malformed or inconsistent."""


class StageError(EdgeDistillError):
    """A pipeline stage ran but its own check failed (parity, accuracy, NaN loss...)."""


class MissingPipelineError(EdgeDistillError):
    """Something the light (torch-free) install cannot do: it needs the training pipeline's packages."""


def missing_pipeline(e: ImportError, what: str) -> MissingPipelineError | None:
    """The one sentence for ``what`` failing because ``e`` is a module only the ``train`` extra installs; None
    when ``e`` is about another module (then it is not this install's doing)."""
    top = (getattr(e, "name", None) or "").split(".")[0]
    if top not in PIPELINE_MODULES:
        return None
    return MissingPipelineError(f"{what} needs {_DISTRIBUTION.get(top, top)}, which this install lacks (the light, "
                                "torch-free package: bench, inspect, evaluate, quantize and bundle); install the "
                                f"pipeline with `{PIPELINE_INSTALL}`.")


def require_pipeline(what: str) -> None:
    """Raise :class:`MissingPipelineError` for ``what`` unless torch (the training pipeline) imports."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise (missing_pipeline(e, what) or e) from None


@contextmanager
def os_errors_as_messages(run_dir: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError (disk full, read-only, permissions) inside a run into one actionable sentence."""
    try:
        yield
    except OSError as e:
        raise os_error_message(e, run_dir) from None


def os_error_message(e: OSError, run_dir: str | os.PathLike) -> EdgeDistillError:
    where = Path(e.filename) if e.filename else Path(run_dir)
    tmp = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", where.name)
    if tmp:
        where = where.with_name(tmp.group(1))  # an atomic write's temporary file: name the file it was for
    reason = (e.strerror or str(e) or type(e).__name__).rstrip(".")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = "free some disk space (or pass another --run-dir), then continue with --resume"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        todo = "make it writable or pass another --run-dir, then continue with --resume"
    else:
        todo = "check the disk and the path, then continue with --resume"
    return EdgeDistillError(f"{where}: cannot write ({reason.lower()}); {todo}.")
