"""The house rules a newcomer relies on, checked from the source: no import cycle in the package (lazy imports
inside functions included), no function over 80 lines, and pipeline stages that read only what they declare."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "edgedistill"
MAX_LINES = 80


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source (top level or inside a function)."""
    mods = _modules()
    graph = {}
    for name, (path, is_pkg) in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                if node.level:
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for a in node.names:  # `from . import x` names a module; `from .m import f` names m
                    deps.add(f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. the import cycles."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "edgedistill.pipeline.stage" in graph["edgedistill.pipeline.stages"]  # the graph sees real edges
    assert "edgedistill.tasks" in graph["edgedistill.pipeline.stage"]  # ... lazy ones inside functions too
    assert cycles(graph) == []


def test_the_pipeline_stage_module_is_a_leaf_of_its_package():
    deps = import_graph()["edgedistill.pipeline.stage"]
    assert not {d for d in deps if d.startswith("edgedistill.pipeline")}


def test_no_function_is_longer_than_80_lines():
    long = [f"{p.relative_to(PKG.parent)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in sorted(PKG.rglob("*.py")) for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_LINES]
    assert long == []


def test_a_stage_that_reads_an_undeclared_section_is_stopped(tmp_path):
    from edgedistill.errors import StageError
    from edgedistill.pipeline.stage import RunContext, Stage
    from edgedistill.recipe import Recipe
    from edgedistill.targets import load_target

    ctx = RunContext(Recipe(), load_target("laptop-x86"), tmp_path)
    ctx.stage = Stage("probe", "probe", sections=("data", "distill.device"), deps=(), fn=lambda c: None)
    assert ctx.recipe.data.batch_size == Recipe().data.batch_size and ctx.recipe.seed == 0  # declared, and always
    assert ctx.recipe.distill.device == "auto"
    with pytest.raises(StageError, match=r"the probe stage reads recipe.distill.lr but does not declare it"):
        ctx.recipe.distill.lr
    with pytest.raises(StageError, match=r"the probe stage reads recipe.teacher but does not declare it"):
        ctx.recipe.teacher
    with pytest.raises(StageError, match=r"the probe stage reads the target but does not declare 'target'"):
        ctx.target
    ctx.stage = None  # between stages the runner reads the whole recipe
    assert ctx.recipe.teacher is not None and ctx.target.name == "laptop-x86"


def test_every_built_in_stage_declares_what_it_writes_and_reads():
    from edgedistill.pipeline import stage_names
    from edgedistill.pipeline.stage import STAGES, model_files

    assert stage_names() == ["size", "teacher", "student", "distill", "qat", "export", "ptq", "litert", "verify", "bench",
                             "report", "bundle"]
    files = model_files()
    assert list(files) == ["teacher_fp32", "student_fp32", "student_fp32_litert", "student_qat_int8", "student_int8",
                           "student_int8_litert", "student_qat_int8_litert"]
    assert {s.name for s, _ in files.values()} == {"export", "qat", "ptq", "litert"}
    assert {n for n, (_, m) in files.items() if m.runtime == "litert"} == {n for n in files if n.endswith("_litert")}
    for s in STAGES.in_order():
        assert set(s.deps) <= set(stage_names()[: stage_names().index(s.name)]), s.name  # only earlier stages
