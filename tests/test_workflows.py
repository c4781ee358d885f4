"""The example workflows as shipped: ComfyUI's UI format with a thumbnail, and each one runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conceptkit import NODE_CLASS_MAPPINGS, cli
from conceptkit.runner.graph import parse_workflow
from conceptkit.runner.io_nodes import io_nodes
from conceptkit.runner.validate import validate

WORKFLOWS = sorted((Path(__file__).resolve().parents[1] / "workflows").glob("*.json"))
BRIDGE_SUFFIX = "_comfy_checkpoint.json"
RUNNABLE = [w for w in WORKFLOWS if not w.name.endswith(BRIDGE_SUFFIX)]
BRIDGES = [w for w in WORKFLOWS if w.name.endswith(BRIDGE_SUFFIX)]


def test_there_is_one_bridge_example_and_the_rest_run_on_the_embedded_model():
    assert len(BRIDGES) == 1 and RUNNABLE


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_are_in_comfyuis_ui_format_with_a_thumbnail(workflow):
    data = json.loads(workflow.read_text())
    assert data["version"] == 0.4 and data["nodes"] and "links" in data
    node_ids = {n["id"] for n in data["nodes"]}
    for node in data["nodes"]:
        assert {"id", "type", "pos", "size", "inputs", "outputs", "mode", "widgets_values"} <= set(node), node["id"]
    for link_id, origin, _slot, target, _target_slot, link_type in data["links"]:
        assert origin in node_ids and target in node_ids and link_type, link_id
    with Image.open(workflow.with_suffix(".jpg")) as thumbnail:
        assert thumbnail.format == "JPEG" and min(thumbnail.size) >= 128


FEW_STEPS = {"steps": 6, "epochs": 2, "tuning_steps": 2}  # what every step count of a workflow runs at here


def at_a_few_steps(workflow: Path) -> list[str]:
    """`--set` options that run every training and sampling node of `workflow` at a few steps: the shipped
    workflow, wiring and every other value as it is, in seconds (the shipped step counts are validated too)."""
    sets = []
    for node in json.loads(workflow.read_text())["nodes"]:
        declared = getattr(NODE_CLASS_MAPPINGS.get(node["type"]), "INPUT_TYPES", dict)()
        inputs = {**declared.get("required", {}), **declared.get("optional", {})}
        sets += [option for name, value in FEW_STEPS.items() if name in inputs
                 for option in ("--set", f"{node['id']}.{name}={value}")]
    return sets


@pytest.mark.parametrize("workflow", RUNNABLE, ids=lambda p: p.name)
def test_workflow_runs_at_a_few_steps_and_writes_images(workflow, tmp_path):
    registry = {**NODE_CLASS_MAPPINGS, **io_nodes(tmp_path, tmp_path)}
    order, problems = validate(parse_workflow(json.loads(workflow.read_text()), registry), registry)
    assert problems == [], problems  # as shipped
    assert cli.main(["run", str(workflow), "--out", str(tmp_path), "--models", str(tmp_path / "models"), "-q",
                     *at_a_few_steps(workflow)]) == 0
    written = sorted(tmp_path.rglob("*.png"))
    assert written
    with Image.open(written[0]) as image:
        assert image.size == (64, 64)


class CheckpointLoaderSimple:
    """ComfyUI's Load Checkpoint, as declared in its nodes.py (inputs and outputs only)."""

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (["v1-5-pruned-emaonly.safetensors"],)}}


@pytest.mark.parametrize("workflow", BRIDGES, ids=lambda p: p.name)
def test_bridge_workflow_feeds_comfyuis_loader_into_our_nodes(workflow, tmp_path):
    data = json.loads(workflow.read_text())
    types = {n["id"]: n["type"] for n in data["nodes"]}
    feeds = {(types[o], types[t], kind) for _, o, _, t, _, kind in data["links"]}
    for kind in ("MODEL", "CLIP", "VAE"):
        assert ("CheckpointLoaderSimple", "ConceptKitModelFromComfy", kind) in feeds
    assert ("ConceptKitModelFromComfy", "ConceptKitSample", "CK_MODEL") in feeds
    registry = {**NODE_CLASS_MAPPINGS, **io_nodes(tmp_path, tmp_path), "CheckpointLoaderSimple": CheckpointLoaderSimple}
    order, problems = validate(parse_workflow(data, registry), registry)
    assert problems == [] and len(order) == len(data["nodes"])


def test_cancel_then_queue_again_with_only_the_sampler_prompt_changed_resumes(tmp_path, monkeypatch, caplog):
    from conceptkit.nodes import comfy_adapter

    workflow = next(w for w in RUNNABLE if w.name == "lipschitz_finetune.json")
    run = ["run", str(workflow), "--out", str(tmp_path / "out"), "--models", str(tmp_path / "models"), "-q",
           "--set", "3.steps=6", "--set", "3.checkpoint_every=0", "--set", "5.batch_size=1"]
    asked = iter(range(1000))
    monkeypatch.setattr(comfy_adapter, "cancel_requested", lambda: next(asked) >= 3)  # Cancel before step 3
    assert cli.main(run) == 2
    checkpoints = tmp_path / "models" / "conceptkit" / "checkpoints"
    assert [p.name for p in checkpoints.glob("*/step_*")] == ["step_3"]

    monkeypatch.setattr(comfy_adapter, "cancel_requested", lambda: False)
    with caplog.at_level("INFO", logger="conceptkit"):
        assert cli.main(run + ["--set", "5.prompt=a <my-creature> creature at the top, green background",
                               "--set", "3.preview_share=0.5"]) == 0
    assert "resumed at step 3 of 6" in caplog.text
    assert not list(checkpoints.glob("*/step_*"))  # the finished run removed its checkpoint
