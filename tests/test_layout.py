"""The dependency rules of ARCHITECTURE.md, checked on every import in core/ (module level or inside functions):
services never import a method or a recipe; methods never import each other; training and sampling never import
each other; recipes never import a method; the shared utilities import no service; core imports nothing of the
nodes, the runner, the benches or ComfyUI."""

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


def test_core_follows_the_dependency_rules():
    assert violations() == []


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
