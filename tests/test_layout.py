"""The dependency rules of ARCHITECTURE.md, checked on every import in core/ (module level, inside functions or
for type checking only): services never import a method or a recipe; methods never import each other; training
and sampling never import each other; recipes never import a method; the shared utilities import no service; core
imports nothing of the nodes, the runner, the benches or ComfyUI; no two modules of core import each other,
directly or around a circle; no module is imported by name (importlib), so every dependency is visible here; and
the nodes import only the public names of the core's packages."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICES = {"model", "sampling", "training", "concepts", "metrics", "world"}
OUTSIDE_CORE = {"nodes", "runner", "benchmarks", "cli"}
COMFY = {"comfy", "folder_paths", "comfy_extras", "server", "execution"}


def area(module: str) -> str:
    """'conceptkit.core.methods.x.y' -> 'method:x'; 'conceptkit.core.sampling.loop' -> 'sampling'; ..."""
    parts = module.split(".")
    if parts[0] != "conceptkit":
        return "external:" + parts[0]
    if len(parts) < 2:
        return "package"
    if parts[1] != "core":
        return parts[1]
    if len(parts) < 3:
        return "core"
    if parts[2] == "methods":
        return f"method:{parts[3]}" if len(parts) > 3 else "methods"
    return parts[2] if parts[2] in SERVICES | {"recipes"} else "utility"


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = ["conceptkit", *relative.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[str]:
    """Every module `path` imports, as absolute names."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.append(target)
            found += [f"{target}.{alias.name}" for alias in node.names]  # `from . import x` imports module x
    return found


def forbidden(source: str, target: str) -> str | None:
    """Why `source` (an area) may not import `target` (an area), or None."""
    if target.startswith("external:") and target.split(":")[1] in COMFY:
        return "core never imports ComfyUI"
    if target in OUTSIDE_CORE:
        return "core never imports the nodes, the runner, the benches or the CLI"
    if source in SERVICES and (target.startswith("method") or target == "recipes"):
        return "a service never imports a method or a recipe"
    if {source, target} == {"sampling", "training"}:
        return "sampling and training are siblings: what both need belongs to the model service"
    if source.startswith("method:") and target.startswith("method:") and source != target:
        return "methods never import each other"
    if source == "recipes" and target.startswith("method"):
        return "recipes never import a method"
    if source == "utility" and (target in SERVICES or target.startswith("method") or target == "recipes"):
        return "the shared utilities import no service"
    return None


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted((root / "core").rglob("*.py")):
        source = area(module_name(path))
        for target in imports(path):
            why = forbidden(source, area(target))
            if why:
                found.append(f"{path.relative_to(root)} imports {target}: {why}")
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of core it imports (a name imported from a module counts as the module)."""
    modules = {module_name(p): p for p in (root / "core").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for target in imports(path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def circles(root: Path = ROOT) -> list[list[str]]:
    """Groups of core modules that import each other, directly or around a circle (Tarjan's components)."""
    graph, index, low, stack, found = import_graph(root), {}, {}, [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def imports_by_name(root: Path = ROOT) -> list[str]:
    """Calls of importlib.import_module or __import__ in core."""
    found = []
    for path in sorted((root / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if called in ("import_module", "__import__"):
                    found.append(f"{path.relative_to(root)} line {node.lineno}")
    return found


def test_core_follows_the_dependency_rules():
    assert violations() == []


def test_core_has_no_import_circle():
    assert circles() == []


def test_core_imports_no_module_by_name():
    assert imports_by_name() == []


def test_the_layout_checks_fail_on_a_planted_upward_import_a_circle_and_an_import_by_name(tmp_path):
    core = tmp_path / "core"
    for folder in ("concepts", "methods/a", "training"):
        (core / folder).mkdir(parents=True)
    (core / "concepts" / "apply.py").write_text("from ..methods.a import table\n")  # a service imports a method
    (core / "methods" / "a" / "table.py").write_text("import importlib\nimportlib.import_module('x')\n")
    (core / "training" / "run.py").write_text("from .losses import Term\n")
    (core / "training" / "losses.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                 "    from .run import TrainingRun\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert any("concepts/apply.py imports conceptkit.core.methods.a" in v and "never imports a method" in v
                   for v in violations(tmp_path))
        assert circles(tmp_path) == [["conceptkit.core.training.losses", "conceptkit.core.training.run"]]
        assert imports_by_name(tmp_path) == ["core/methods/a/table.py line 2"]
    finally:
        ROOT = saved


def test_the_nodes_import_only_public_names_of_the_core():
    """A node imports a service's or a method's package (`core.training`, `core.methods.sge_inverter`) or a
    shared module (`core.errors`), never their inner modules, and only names their `__all__` lists."""
    import importlib

    found = []
    for path in sorted((ROOT / "nodes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level != 2 or not (node.module or "").startswith("core"):
                continue
            parts = node.module.split(".")
            package = parts[:3] if parts[1:2] == ["methods"] else parts[:2]
            if parts != package:
                found.append(f"{path.name} imports {node.module}")
                continue
            public = getattr(importlib.import_module("conceptkit." + node.module), "__all__", None)
            found += [f"{path.name} imports {node.module}.{a.name}" for a in node.names
                      if public is not None and a.name not in public]
    assert found == []


def test_the_rules_are_read_from_every_kind_of_import(tmp_path):
    core = tmp_path / "core"
    (core / "sampling").mkdir(parents=True)
    (core / "methods" / "a").mkdir(parents=True)
    (core / "sampling" / "loop.py").write_text("def f():\n    from ..training import engine\n")
    (core / "methods" / "a" / "x.py").write_text("from ...methods.b import y\nimport folder_paths\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = violations(tmp_path)
    finally:
        ROOT = saved
    assert any("sampling/loop.py imports conceptkit.core.training" in v and "siblings" in v for v in found)
    assert any("methods/a/x.py imports conceptkit.core.methods.b" in v for v in found)
    assert any("folder_paths" in v and "ComfyUI" in v for v in found)


def test_every_method_has_its_folder():
    methods = {p.name for p in (ROOT / "core" / "methods").iterdir() if (p / "__init__.py").is_file()}
    assert methods == {"concept_encoder", "sge_inverter", "personalization_guidance", "lipschitz_finetune",
                       "concept_memory"}
