"""The dependency rule, read from the source: layers run one way and nothing imports a private name
across packages.

    core      pipeline.contract, pipeline.features, pipeline.settings: import nothing else of ours
    shared    pipeline.style, pipeline.waterfall, pipeline.display (what a figure and a number look like): core and shared only
    models    core and models
    pipeline  core, models and pipeline (never serving)
    serving   core, shared, models, pipeline.registry (reads) and serving (never training code)
    CLI       pipeline.cli, at the top: may import anything public

Imports inside functions count: a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = ("pipeline", "models", "serving")
CORE = {"pipeline.contract", "pipeline.features", "pipeline.settings"}
SHARED = {"pipeline.style", "pipeline.waterfall", "pipeline.display"}
CLI = {"pipeline.cli"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in OURS:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names], node.lineno))
    return [f for f in found if f[0].split(".")[0] in OURS]


def _allowed(importer: str, imported: str) -> bool:
    if importer in CLI:
        return True
    if importer in CORE:
        return imported in CORE
    if importer in SHARED:
        return imported in CORE | SHARED
    if importer.startswith("models"):
        return imported in CORE or imported.startswith("models")
    if importer.startswith("pipeline"):
        return not imported.startswith("serving")
    if importer.startswith("serving"):
        return (imported in CORE | SHARED or imported.startswith(("models", "serving"))
                or imported == "pipeline.registry")
    return False


def _targets(imported: str, names: list[str], modules: dict[str, Path]) -> set[str]:
    """`from serving.routes import cds_hooks` imports the module serving.routes.cds_hooks."""
    subs = {f"{imported}.{n}" for n in names if f"{imported}.{n}" in modules}
    return subs or {_resolve(imported, modules)}


def _resolve(name: str, modules: dict[str, Path]) -> str:
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def test_layers_run_one_way():
    modules = _modules()
    wrong = []
    for importer, path in modules.items():
        for imported, names, line in _imports(path):
            for target in _targets(imported, names, modules):
                if not _allowed(importer, target):
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {importer} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_private_name_is_imported_across_packages():
    wrong = []
    for importer, path in _modules().items():
        for imported, names, line in _imports(path):
            if imported.split(".")[0] != importer.split(".")[0]:
                wrong += [f"{path.relative_to(ROOT)}:{line}: {imported}.{n}" for n in names if n.startswith("_")]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    modules = _modules()
    graph = {m: set().union(*[_targets(i, n, modules) for i, n, _ in _imports(p)] or [set()]) - {m}
             for m, p in modules.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_the_rule_catches_what_it_should():
    assert not _allowed("models.artifact", "pipeline.train")
    assert not _allowed("pipeline.train", "serving.app")
    assert not _allowed("serving.state", "pipeline.train")
    assert _allowed("serving.state", "pipeline.registry") and _allowed("pipeline.cli", "serving.app")
    assert not _allowed("pipeline.contract", "models.artifact")
