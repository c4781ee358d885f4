"""`conceptkit run`: validates a workflow as ComfyUI does before anything runs, then runs it headless."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from PIL import Image

from conceptkit import cli
from conceptkit.core import model as model_service

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
TINY = ["--set", "1.model=diffusers/tiny_sd1", "--set", "2.width=32", "--set", "2.height=32", "--set", "2.steps=4"]


def ui_workflow() -> dict:
    return json.loads((WORKFLOWS / "text_to_image.json").read_text())


def run(tmp_path, workflow: dict | Path, *extra, models_dir=None) -> int:
    path = workflow
    if isinstance(workflow, dict):
        path = tmp_path / "workflow.json"
        path.write_text(json.dumps(workflow))
    args = ["run", str(path), "--out", str(tmp_path / "out"), "-q"]
    if models_dir is not None:
        args += ["--models", str(models_dir)]
    return cli.main(args + list(extra))


@pytest.fixture
def load_calls(monkeypatch):
    """Records every model load, to show that nothing runs before validation."""
    calls = []
    original = model_service.load_model

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr("conceptkit.nodes.model_nodes.load_model", spy)
    return calls


def test_example_workflow_runs_headless_and_writes_pngs(tmp_path, models_dir, capsys):
    assert run(tmp_path, WORKFLOWS / "text_to_image.json", *TINY, "--set", "2.batch_size=2",
               models_dir=models_dir) == 0
    written = sorted((tmp_path / "out").glob("*.png"))
    assert [p.name for p in written] == ["ConceptKit_text_to_image_00001_.png", "ConceptKit_text_to_image_00002_.png"]
    with Image.open(written[0]) as image:
        assert image.size == (32, 32)
        assert json.loads(image.info["workflow"])["nodes"]  # the workflow travels in the PNG, as in ComfyUI
    assert str(written[0]) in capsys.readouterr().out


def test_api_format_runs_too(tmp_path, models_dir):
    api = {
        "1": {"class_type": "ConceptKitLoadModel",
              "inputs": {"model": "checkpoints/tiny_sd1.safetensors", "device": "cpu", "dtype": "fp32",
                         "prediction_type": "auto"}},
        "2": {"class_type": "ConceptKitSample",
              "inputs": {"model": ["1", 0], "prompt": "a cat", "negative_prompt": "", "seed": 3, "steps": 3,
                         "cfg": 4.0, "sampler": "euler", "width": 32, "height": 32, "batch_size": 1}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    assert run(tmp_path, api, models_dir=models_dir) == 0
    assert len(list((tmp_path / "out" / "preview").glob("*.png"))) == 1


def test_missing_link_names_node_and_input_and_runs_nothing(tmp_path, models_dir, load_calls, capsys):
    workflow = ui_workflow()
    workflow["nodes"][1]["inputs"][0]["link"] = None
    workflow["links"] = [link for link in workflow["links"] if link[0] != 1]
    assert run(tmp_path, workflow, *TINY, models_dir=models_dir) != 0
    err = capsys.readouterr().err
    assert "node 2 (ConceptKitSample), input 'model': required input is not connected" in err
    assert load_calls == [] and not (tmp_path / "out").exists()


def test_link_of_the_wrong_type_is_refused(tmp_path, models_dir, load_calls, capsys):
    workflow = ui_workflow()
    workflow["nodes"].append({"id": 4, "type": "LoadImage", "mode": 0, "inputs": [],
                              "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}],
                              "widgets_values": ["subject.png", "image"]})
    workflow["links"][0] = [1, 4, 0, 2, 0, "IMAGE"]
    (tmp_path / "input").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "input" / "subject.png")
    code = run(tmp_path, workflow, *TINY, "--input-dir", str(tmp_path / "input"), models_dir=models_dir)
    assert code != 0
    err = capsys.readouterr().err
    assert "node 2 (ConceptKitSample), input 'model': expects CK_MODEL" in err and "gives IMAGE" in err
    assert load_calls == []


def test_out_of_range_value_is_refused(tmp_path, models_dir, load_calls, capsys):
    workflow = ui_workflow()
    workflow["nodes"][1]["widgets_values"][4] = 5000  # steps, max 1000
    assert run(tmp_path, workflow, "--set", "1.model=diffusers/tiny_sd1", models_dir=models_dir) != 0
    err = capsys.readouterr().err
    assert "node 2 (ConceptKitSample), input 'steps': 5000 is bigger than the maximum 1000" in err
    assert load_calls == []


def test_every_problem_is_reported_at_once(tmp_path, models_dir, capsys):
    assert run(tmp_path, WORKFLOWS / "text_to_image.json", "--set", "1.model=checkpoints/absent.safetensors",
               "--set", "2.sampler=heun9", "--set", "2.cfg=\"high\"", models_dir=models_dir) == 2
    err = capsys.readouterr().err
    assert "node 1 (ConceptKitLoadModel), input 'model': 'checkpoints/absent.safetensors' is not one of" in err
    assert "input 'sampler': 'heun9' is not one of" in err
    assert "input 'cfg': 'high' is not a number" in err


def test_unknown_node_type_and_no_output(tmp_path, capsys):
    workflow = ui_workflow()
    workflow["nodes"][0]["type"] = "SomeoneElsesLoader"
    assert run(tmp_path, workflow) == 2
    assert "node 1 (SomeoneElsesLoader): unknown node type 'SomeoneElsesLoader'" in capsys.readouterr().err
    workflow = ui_workflow()
    workflow["nodes"] = workflow["nodes"][:2]
    assert run(tmp_path, workflow) == 2
    assert "no output node" in capsys.readouterr().err


def test_bad_overrides_name_what_is_wrong(tmp_path, capsys):
    assert run(tmp_path, WORKFLOWS / "text_to_image.json", "--set", "9.seed=1") == 2
    assert "no node 9" in capsys.readouterr().err
    assert run(tmp_path, WORKFLOWS / "text_to_image.json", "--set", "2.model=x") == 2
    assert "is linked" in capsys.readouterr().err
    assert run(tmp_path, WORKFLOWS / "text_to_image.json", "--set", "seed") == 2
    assert "NODE_ID.INPUT=VALUE" in capsys.readouterr().err


def test_reroutes_and_muted_nodes_are_handled_like_comfyui(tmp_path, models_dir):
    workflow = copy.deepcopy(ui_workflow())
    # model -> Reroute -> sampler; plus a muted extra saver that must not run
    workflow["nodes"].append({"id": 5, "type": "Reroute", "mode": 0,
                              "inputs": [{"name": "", "type": "*", "link": 1}],
                              "outputs": [{"name": "", "type": "CK_MODEL", "links": [3]}]})
    workflow["nodes"][1]["inputs"][0]["link"] = 3
    workflow["links"].append([3, 5, 0, 2, 0, "CK_MODEL"])
    workflow["nodes"].append({"id": 6, "type": "SaveImage", "mode": 2,
                              "inputs": [{"name": "images", "type": "IMAGE", "link": 4}],
                              "widgets_values": ["muted"]})
    workflow["links"].append([4, 2, 0, 6, 0, "IMAGE"])
    assert run(tmp_path, workflow, *TINY, models_dir=models_dir) == 0
    names = [p.name for p in (tmp_path / "out").glob("*.png")]
    assert names and not any(n.startswith("muted") for n in names)


def test_node_failure_is_reported_with_the_node(tmp_path, capsys):
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "broken.safetensors").write_bytes(b"not a safetensors file")
    assert run(tmp_path, WORKFLOWS / "text_to_image.json", "--set", "1.model=checkpoints/broken.safetensors",
               models_dir=models) == 2
    err = capsys.readouterr().err
    assert "node 1 (ConceptKitLoadModel) failed: " in err and "broken.safetensors" in err
    assert "Traceback" not in err


def test_python_dash_m_entry_point(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "conceptkit", "run", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "NODE_ID.INPUT=VALUE" in out.stdout
