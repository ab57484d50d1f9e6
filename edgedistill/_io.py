"""Atomic writes and content hashes: a crash never leaves a half-written file that looks whole."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def make_readable(path: str | os.PathLike) -> None:
    """Give a file (or a folder and the files in it) the permissions the umask gives new ones: ``mkstemp`` /
    ``mkdtemp`` make owner-only entries, and a run's artifacts are meant to be shared."""
    path = Path(path)
    if path.is_dir():
        path.chmod(0o777 & ~_UMASK)
        for p in path.iterdir():
            p.chmod(0o666 & ~_UMASK)
    else:
        path.chmod(0o666 & ~_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None],
                 defer: Optional[Callable[[Callable[[], None]], Any]] = None) -> Path:
    """Call ``write(tmp_path)`` for a temporary file beside ``path``, then fsync it and rename it into place.

    ``defer`` (e.g. a one-thread executor's ``submit``) is handed that last part, the slow one (the disk's commit),
    to run later; the file is in place once it has run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    make_readable(tmp)  # mkstemp makes 0600

    def commit() -> None:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def guarded(step: Callable[[], None]) -> None:
        try:
            step()
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    guarded(lambda: write(tmp))
    if defer is None:
        guarded(commit)
    else:
        defer(lambda: guarded(commit))
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    def _w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, _w)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()


def file_size_mb(path: str | os.PathLike) -> float:
    """Size on disk in MB (10^6 bytes), counting an ONNX external-data file beside it if there is one."""
    path = Path(path)
    total = path.stat().st_size
    for extra in (path.with_name(path.name + ".data"), path.with_suffix(".onnx.data")):
        if extra.exists() and extra != path:
            total += extra.stat().st_size
            break
    return total / 1e6
