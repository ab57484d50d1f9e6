"""What produced a results file: the command and the git commit. Every benchmark script that writes a file
under benchmarks/results/ records them through this one helper (tests/test_results_files.py checks the files).

    from benchmarks._provenance import stamp   # with the repository root on sys.path
    result = stamp({...})                      # adds "command", "commit" and "dirty"
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("command", "commit", "dirty")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True).stdout.strip()


def git_commit(repo: Path = ROOT) -> tuple[str, bool]:
    """``git rev-parse HEAD`` of ``repo`` and whether its tracked files differ from it (untracked files aside)."""
    return _git(repo, "rev-parse", "HEAD"), bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))


def command(argv: list[str] | None = None) -> str:
    """The command line that ran this script: ``python benchmarks/x.py ARGS`` (``sys.argv`` joined, the script's
    path relative to the repository). ``argv``: the arguments after the script, when ``main(argv)`` got them."""
    script, *args = sys.argv if argv is None else [sys.argv[0], *argv]
    path = Path(script).resolve()
    if path.is_relative_to(ROOT):
        script = path.relative_to(ROOT).as_posix()
    return shlex.join(["python", script, *map(str, args)])


def provenance(argv: list[str] | None = None, repo: Path = ROOT) -> dict:
    """``{"command": ..., "commit": ..., "dirty": ...}`` for this invocation."""
    commit, dirty = git_commit(repo)
    return {"command": command(argv), "commit": commit, "dirty": dirty}


def stamp(result: dict, argv: list[str] | None = None, repo: Path = ROOT) -> dict:
    """``result`` with this invocation's command, commit and dirty flag. A script that updates part of an
    existing file (keeping what an earlier invocation measured) keeps that invocation's provenance too,
    under ``"earlier_runs"``, so no figure is credited to a command that did not produce it."""
    now = provenance(argv, repo)
    before = {k: result[k] for k in (*KEYS, "provenance_note") if k in result}
    if before and before != now:
        earlier = result.setdefault("earlier_runs", [])
        if before not in earlier:
            earlier.append(before)
    result.pop("provenance_note", None)  # it described the provenance now moved to earlier_runs
    result.update(now)
    return result
