"""Checks that turn bad input into one sentence before it can do harm.

- :func:`check_onnx`: ``onnx.checker`` and the opset range, before any ONNX file a user gives is used.
- :func:`preflight`: the recipe's registry names, model params and layer paths, checked before the
  run folder is touched (not after the teacher has trained for an hour).
- :func:`os_errors_as_messages`: a full disk or a read-only folder in the middle of a run becomes an
  :class:`EdgeDistillError` naming the file and what to do.

No torch at import time: ``bench`` / ``inspect`` use :func:`check_onnx` on boards without torch.
"""

from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import DataError, EdgeDistillError

MIN_OPSET = 7  # ONNX Runtime only guarantees support from opset 7 on


def check_onnx(path: str | os.PathLike, what: str = "model"):
    """Validate an ONNX file with ``onnx.checker`` and check its opset; return the loaded ModelProto.

    ``.ort`` files (ORT's own flatbuffer format) are left to ONNX Runtime and return None.
    """
    import onnx

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: {what} file not found; check the path.")
    if p.suffix == ".ort":
        return None
    try:
        onnx.checker.check_model(str(p))  # by path: models over 2 GB and external data work too
        model = onnx.load(str(p))
    except Exception as e:  # ValidationError, protobuf DecodeError, missing external data...
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise DataError(f"{p}: not a valid ONNX {what} ({detail}); pass an .onnx file exported with "
                        "torch.onnx.export or re-export it.") from None
    opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    newest = onnx.defs.onnx_opset_version()
    version = opsets.get("ai.onnx")
    if version is not None and not MIN_OPSET <= version <= newest:
        raise DataError(f"{p}: uses ONNX opset {version}, outside the {MIN_OPSET}..{newest} that this onnx / "
                        "onnxruntime support; re-export it with an opset in that range (17 is a safe choice).")
    return model


def check_names(recipe) -> None:
    """Architectures and their parameters, loss names and their parameters, against what each accepts: before
    any data is read (a typo fails in a second, not after the data set is listed)."""
    from .distill.losses.base import check_loss
    from .models.core import check_params
    from .student import student_spec

    check_params(recipe.teacher.arch, recipe.teacher.params, "teacher")
    arch, params, key = student_spec(recipe)
    check_params(arch, params, key)
    for i, term in enumerate(recipe.distill.losses):
        check_loss(term.name, term.params, f"distill.losses[{i}]")


def preflight(recipe, task, splits) -> None:
    """Let the task build the recipe's models, teachers and losses once (without training) so a bad name,
    parameter or layer path fails in seconds with its key; the global RNG is left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        task.preflight(recipe, splits)


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
