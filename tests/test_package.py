"""The pack loads as ComfyUI loads it and as a pip package, and every node keeps ComfyUI's contract."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import conceptkit

ROOT = Path(__file__).resolve().parents[1]
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def all_nodes():
    return sorted(conceptkit.NODE_CLASS_MAPPINGS.items())


def test_root_exports_the_mappings():
    assert set(conceptkit.NODE_CLASS_MAPPINGS) == set(conceptkit.NODE_DISPLAY_NAME_MAPPINGS)
    assert {"ConceptKitLoadModel", "ConceptKitSample"} <= set(conceptkit.NODE_CLASS_MAPPINGS)


@pytest.mark.parametrize("name,node", all_nodes())
def test_node_contract_and_tooltips(name, node):
    for attribute in ("INPUT_TYPES", "RETURN_TYPES", "FUNCTION", "CATEGORY", "DESCRIPTION"):
        assert hasattr(node, attribute), f"{name} lacks {attribute}"
    assert node.CATEGORY.startswith("ConceptKit")
    assert callable(getattr(node, node.FUNCTION))
    assert len(node.DESCRIPTION) > 40
    spec = node.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    for section in ("required", "optional"):
        for input_name, declared in (spec.get(section) or {}).items():
            kind = declared[0]
            options = declared[1] if len(declared) > 1 else {}
            assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
            assert isinstance(kind, list) or kind in WIDGET_TYPES or kind.isupper(), f"{name}.{input_name}"
            if isinstance(kind, list):
                assert kind, f"{name}.{input_name} offers no choices"
            if isinstance(kind, str) and kind.startswith("CK_"):
                assert kind in {"CK_MODEL", "CK_CONCEPT"}
    for t in node.RETURN_TYPES:
        assert isinstance(t, str) and t.isupper()
    if hasattr(node, "OUTPUT_TOOLTIPS"):
        assert len(node.OUTPUT_TOOLTIPS) == len(node.RETURN_TYPES)


def test_loading_imports_nothing_of_comfyui():
    code = "import sys, conceptkit; bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'folder_paths')]; " \
           "assert not bad, bad; print(len(conceptkit.NODE_CLASS_MAPPINGS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 2


def test_loads_from_custom_nodes_under_any_folder_name(tmp_path):
    """ComfyUI imports custom_nodes/<folder> as a package by its folder name: relative imports only."""
    pack = tmp_path / "custom_nodes" / "My-ConceptKit copy"
    shutil.copytree(ROOT, pack, ignore=shutil.ignore_patterns(".git", "tests", "*.egg-info", "__pycache__"))
    code = (
        "import importlib.util, sys\n"
        "try:\n    import conceptkit\n    raise SystemExit('the installed package is visible: test is void')\n"
        "except ImportError:\n    pass\n"
        f"init = {str(pack / '__init__.py')!r}\n"
        "spec = importlib.util.spec_from_file_location('my_conceptkit_copy', init, "
        "submodule_search_locations=[init.rsplit('/', 1)[0]])\n"
        "module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module\n"
        "spec.loader.exec_module(module)\n"
        "print(sorted(module.NODE_CLASS_MAPPINGS))\n"
        "print(module.NODE_CLASS_MAPPINGS['ConceptKitSample'].__module__)\n"
    )
    # Run with no access to the installed package, as in a ComfyUI environment without pip install.
    hide_installed = ("import sys\n"
                      "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n")
    out = subprocess.run([sys.executable, "-c", hide_installed + code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ConceptKitSample" in out.stdout
    assert "my_conceptkit_copy.nodes" in out.stdout


def test_pyproject_has_no_pins_and_registry_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for dependency in project["project"]["dependencies"]:
        assert "==" not in dependency and "<" not in dependency, dependency
    assert project["project"]["scripts"]["conceptkit"] == "conceptkit.cli:main"
    comfy = project["tool"]["comfy"]
    assert {"PublisherId", "DisplayName"} <= set(comfy)
    assert (ROOT / "LICENSE").is_file()


def test_pyproject_lists_every_package_so_a_plain_install_has_them():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    skip = {"tests", "world_model", "workflows", "docs", "scripts"}
    found = {"conceptkit." + ".".join(p.parent.relative_to(ROOT).parts) if p.parent != ROOT else "conceptkit"
             for p in ROOT.rglob("__init__.py")
             if not (set(p.relative_to(ROOT).parts) & skip) and ".venv" not in p.parts}
    assert found - listed == set()
