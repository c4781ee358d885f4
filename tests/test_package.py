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
                assert kind in {"CK_MODEL", "CK_CONCEPT", "CK_ENCODER", "CK_SGE", "CK_MEMORY",
                                "CK_SUBJECTS"}  # nodes/sockets.py
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
    assert project["project"]["scripts"] == {"conceptkit": "conceptkit.cli:main"}
    assert all(isinstance(c, str) for c in project["project"]["classifiers"])
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


def seed_inputs():
    for name, node in all_nodes():
        spec = node.INPUT_TYPES()
        for section in ("required", "optional"):
            for input_name, declared in (spec.get(section) or {}).items():
                if input_name in ("seed", "noise_seed"):
                    yield name, node, declared[1]


def test_training_seeds_never_randomize_after_a_queue_and_every_seed_has_one_range():
    from conceptkit.nodes.sockets import MAX_SEED

    seeds = list(seed_inputs())
    assert seeds
    for name, node, options in seeds:
        assert options["max"] == MAX_SEED and options["min"] == 0, name
        assert "control_after_generate" in options, f"{name}: the frontend would add a randomizing control"
        trains = "checkpoint_every" in {**node.INPUT_TYPES()["required"], **node.INPUT_TYPES().get("optional", {})}
        if trains or name in ("ConceptKitWorldSubject", "ConceptKitWorldDomain"):  # a changed seed would retrain
            assert options["control_after_generate"] is False, name


def test_display_names_follow_one_scheme():
    names = conceptkit.NODE_DISPLAY_NAME_MAPPINGS
    method_nodes = {"ConceptKitLipschitzFinetune": "Lipschitz Finetune",
                    "ConceptKitPersonalizationGuidanceSampler": "Personalization Guidance Sampler",
                    "ConceptKitConceptEncoder": "Concept Encoder",
                    "ConceptKitPretrainConceptEncoder": "Pretrain Concept Encoder",
                    "ConceptKitSGEInverter": "SGE Inverter",
                    "ConceptKitSGESample": "SGE Sample", "ConceptKitConceptMemory": "Concept Memory",
                    "ConceptKitMemoryLearn": "Memory Learn", "ConceptKitApplyMemory": "Apply Memory"}
    assert len(set(names.values())) == len(names)
    for key, shown in names.items():
        assert shown == method_nodes[key] if key in method_nodes else shown.startswith("ConceptKit "), shown


def test_importing_the_pack_loads_no_heavy_library():
    code = ("import sys, conceptkit; heavy = [m for m in ('diffusers', 'transformers', 'peft', 'accelerate') "
            "if m in sys.modules]; assert not heavy, heavy; print(len(conceptkit.NODE_CLASS_MAPPINGS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]


def test_requirements_txt_matches_pyproject_for_comfyui_manager():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert [line for line in lines if line and not line.startswith("#")] == declared
    assert not any(line.startswith("torch") and ("==" in line or "<" in line) for line in lines)


def test_the_web_extension_ships_for_the_nodes_that_write_files():
    script = (ROOT / conceptkit.WEB_DIRECTORY / "written_file.js").read_text()
    for node in ("ConceptKitSaveConcept", "ConceptKitExportConcept"):
        assert node in conceptkit.NODE_CLASS_MAPPINGS and f'"{node}"' in script
    assert "web/*.js" in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "conceptkit"]


def test_errors_show_a_clean_type_name_in_comfyui_and_survive_pickling():
    """ComfyUI names an error `module.Class` (execution.full_type_name): ours say conceptkit, never the path the
    pack was loaded from; an error from a bench's worker process unpickles to the same class and message."""
    import pickle

    from conceptkit.core.errors import Cancelled, Diverged, InputError

    def full_type_name(klass):  # as ComfyUI's execution.py writes it
        return klass.__qualname__ if klass.__module__ == "builtins" else f"{klass.__module__}.{klass.__qualname__}"

    assert [full_type_name(c) for c in (InputError, Cancelled, Diverged)] == [
        "conceptkit.InputError", "conceptkit.Cancelled", "conceptkit.Diverged"]
    again = pickle.loads(pickle.dumps(Diverged("training diverged at step 3")))
    assert type(again) is Diverged and str(again) == "training diverged at step 3"


def readme_node_rows():
    rows = {}
    for line in (ROOT / "README.md").read_text(encoding="utf-8").split("## Nodes", 1)[1].splitlines():
        if line.startswith("| **"):
            name = line.split("**")[1]
            assert name not in rows, f"README's Nodes table has two rows for {name}"
            rows[name] = line
        elif rows and not line.startswith("|"):
            break
    return rows


def test_readme_nodes_table_lists_every_node_with_its_inputs():
    rows = readme_node_rows()
    assert set(rows) == set(conceptkit.NODE_DISPLAY_NAME_MAPPINGS.values())
    for name, node in all_nodes():
        row = rows[conceptkit.NODE_DISPLAY_NAME_MAPPINGS[name]]
        for input_name in node.INPUT_TYPES()["required"]:
            assert f"`{input_name}`" in row, f"README's row for {name} does not name its input {input_name}"
