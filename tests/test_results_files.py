"""benchmarks/results/ holds only files the README or docs cite, each recording the command and the commit
that produced it (benchmarks/_provenance.py writes them; files older than it say so in "provenance_note")."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHA = re.compile(r"[0-9a-f]{7,40}")


def _docs_text(root: Path = ROOT) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])


def problems(results: Path = RESULTS, docs: str | None = None) -> dict[str, list[str]]:
    """Each results file's problems: not cited by README.md or docs/*.md, no command, no commit."""
    docs = _docs_text() if docs is None else docs
    found = {}
    for path in sorted(p for p in results.iterdir() if p.is_file()):
        issues = []
        if not re.search(r"(?<![\w.-])" + re.escape(path.name), docs):  # the whole name: demo.json is not bench_demo.json
            issues.append("cited by neither README.md nor docs/*.md")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            data = None
        if not isinstance(data, dict):
            issues.append("not a JSON object")
            data = {}
        if not (isinstance(data.get("command"), str) and data["command"].strip()):
            issues.append("records no command")
        commit = data.get("commit", data.get("git_commit"))  # git_commit: scale.py's name, a dict with its head
        if isinstance(commit, dict):
            commit = commit.get("head")
        if not (isinstance(commit, str) and SHA.fullmatch(commit)):
            issues.append("records no commit")
        found[path.name] = issues
    return found


def test_results_folder_is_not_empty():
    assert any(RESULTS.glob("*.json"))


@pytest.mark.parametrize("name", sorted(p.name for p in RESULTS.iterdir() if p.is_file()))
def test_results_file_is_cited_and_records_command_and_commit(name):
    assert problems()[name] == [], f"benchmarks/results/{name}"


def test_the_check_fails_on_an_uncited_file_without_provenance(tmp_path):
    (tmp_path / "probe_nobody_cites.json").write_text('{"accuracy": 0.9}')
    (tmp_path / "cited.json").write_text('{"command": "python benchmarks/x.py", "commit": "93fc889", "accuracy": 0.9}')
    (tmp_path / "cited_scale_style.json").write_text(
        '{"command": "python benchmarks/scale.py", "git_commit": {"head": "aea4d9dac94ad7416bfb79a07f897a40e5f2ad90"}}')
    (tmp_path / "ted.json").write_text('{"command": "c", "commit": "93fc889"}')  # only inside another file's name
    found = problems(tmp_path, docs="see `cited.json` and `benchmarks/results/cited_scale_style.json`")
    assert found["ted.json"] == ["cited by neither README.md nor docs/*.md"]
    assert found["probe_nobody_cites.json"] == ["cited by neither README.md nor docs/*.md", "records no command",
                                                "records no commit"]
    assert found["cited.json"] == [] and found["cited_scale_style.json"] == []


def test_provenance_helper_records_command_commit_and_keeps_earlier_runs(monkeypatch):
    import sys

    from benchmarks import _provenance

    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "demo.py"), "--out", "a b.json"])
    result = _provenance.stamp({"command": "python benchmarks/demo.py", "commit": "0" * 40, "provenance_note": "x",
                                "value": 1})
    assert result["command"] == "python benchmarks/demo.py --out 'a b.json'"
    assert SHA.fullmatch(result["commit"]) and isinstance(result["dirty"], bool)
    assert result["earlier_runs"] == [{"command": "python benchmarks/demo.py", "commit": "0" * 40, "provenance_note": "x"}]
    assert "provenance_note" not in result and result["value"] == 1
