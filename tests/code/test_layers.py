"""The dependency rule, read from the source: each package is a layer, and imports only point down.

    cli        icans-risk, on top: may import any layer below
    pipeline   offline: data in, models out        serving   online: requests in, explained risks out
               (never import each other)
    models     what a model is
    core       what a patient row is: imports nothing else of ours

Inside `pipeline/`, the stages that compute and render (stats < data < evidence < report) never reach
up into the stages that train, track, update or monitor.

The order below is the whole rule: no named exceptions. Every import counts (function-local and
TYPE_CHECKING ones too), relative imports are refused, the rule is checked on every path through the
import graph (not only on direct imports), and an empty graph fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# package -> layer; a package may import its own layer's package and any lower layer
LAYERS = {"core": 0, "models": 1, "pipeline": 2, "serving": 2, "cli": 3}
# inside pipeline/: these stages may import only lower ones; every other stage (and evaluate, score) is above
PIPELINE_STAGES = {"stats": 0, "data": 1, "evidence": 2, "report": 3}
NOT_OURS = {"tests", "bench", "deploy", "docs", "build", "dist"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in LAYERS:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "migrations" in path.relative_to(ROOT).parts:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str:
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _edges(path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module of ours, line) for every import in the file; `from a import b` is a.b if b is a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
            found += [(s, node.lineno) for s in subs] or [(node.module, node.lineno)]
    return [(_resolve(m, modules), line) for m, line in found if m.split(".")[0] in LAYERS]


def _graph() -> dict[str, dict[str, int]]:
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        graph[name] = {}
        for target, line in _edges(path, modules):
            if target != name:
                graph[name].setdefault(target, line)
    return graph


def _stage(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "pipeline" or len(parts) < 2:
        return len(PIPELINE_STAGES)
    return PIPELINE_STAGES.get(parts[1], len(PIPELINE_STAGES))


def allowed(importer: str, imported: str) -> bool:
    """May `importer` depend on `imported` (directly or through others)?"""
    a, b = importer.split(".")[0], imported.split(".")[0]
    if a == b:
        return a != "pipeline" or _stage(imported) <= _stage(importer)
    return LAYERS[b] < LAYERS[a]


def violations(graph: dict[str, dict[str, int]]) -> list[str]:
    """Every module that reaches a module it may not depend on, with the import path that does it."""
    wrong = []
    for start in sorted(graph):
        # breadth-first: the shortest path to each reachable module
        parent: dict[str, str] = {start: ""}
        queue = [start]
        while queue:
            node = queue.pop(0)
            for nxt in sorted(graph.get(node, {})):
                if nxt not in parent:
                    parent[nxt] = node
                    queue.append(nxt)
        for reached in sorted(parent):
            if reached != start and not allowed(start, reached):
                chain, at = [reached], reached
                while parent[at]:
                    at = parent[at]
                    chain.append(at)
                wrong.append(" -> ".join(reversed(chain)))
    return wrong


def test_the_packages_are_the_layers() -> None:
    """Every top-level package of ours is in the order, and the order's packages exist."""
    tops = {p.parent.name for p in ROOT.glob("*/__init__.py")} - NOT_OURS
    assert tops == set(LAYERS), f"packages outside the layer order: {sorted(tops ^ set(LAYERS))}"


def test_the_import_graph_is_not_empty() -> None:
    graph = _graph()
    edges = sum(len(v) for v in graph.values())
    per_package = {p: sum(1 for m in graph if m.split(".")[0] == p) for p in LAYERS}
    assert edges >= 100 and all(per_package.values()), (edges, per_package)


def test_imports_only_point_down() -> None:
    wrong = violations(_graph())
    assert not wrong, "imports that reach up or across (importer -> ... -> imported):\n" + "\n".join(wrong)


def test_no_relative_imports() -> None:
    wrong = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not wrong, "relative imports (the layer rule cannot read them): " + ", ".join(wrong)


def test_no_private_name_is_imported_across_packages() -> None:
    wrong = []
    for importer, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LAYERS:
                if node.module.split(".")[0] != importer.split(".")[0]:
                    wrong += [f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{a.name}"
                              for a in node.names if a.name.startswith("_")]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_the_rule_catches_what_it_should() -> None:
    # direct reaches up and across
    assert not allowed("core.features", "models.artifact")
    assert not allowed("models.artifact", "pipeline.train.run")
    assert not allowed("pipeline.train.run", "serving.app")
    assert not allowed("serving.state", "pipeline.train.run")
    assert not allowed("serving.app", "cli.main")
    assert not allowed("pipeline.report.model_card", "pipeline.train.instability")
    assert not allowed("pipeline.evidence.build", "pipeline.train.validation")
    assert allowed("cli.main", "serving.app") and allowed("serving.state", "models.registry")
    assert allowed("pipeline.train.run", "pipeline.report.figures") and allowed("core.waterfall", "core.style")
    # a reach through an innocent-looking middle module is found, with its path
    graph = {"serving.x": {"models.y": 1}, "models.y": {"pipeline.z": 2}, "pipeline.z": {}}
    assert "serving.x -> models.y -> pipeline.z" in violations(graph)
    assert violations({"core.a": {"core.b": 1}, "core.b": {}, "models.c": {"core.a": 1}}) == []
