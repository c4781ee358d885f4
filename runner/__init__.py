"""The headless workflow runner: `conceptkit run WORKFLOW.json`."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import WorkflowError
from ..nodes import NODE_CLASS_MAPPINGS
from ..nodes.comfy_adapter import headless_models_dir
from .execute import run_graph
from .graph import Link, parse_workflow, read_workflow_json
from .io_nodes import io_nodes


def parse_override(text: str) -> tuple[str, str, object]:
    """'NODE_ID.INPUT=VALUE' -> (node id, input, value); VALUE is read as JSON when it parses, else text."""
    target, sep, raw = text.partition("=")
    node_id, dot, name = target.partition(".")
    if not sep or not dot or not node_id or not name:
        raise WorkflowError(f"--set '{text}': expected NODE_ID.INPUT=VALUE, for example --set 5.seed=42")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return node_id, name, value


def run_workflow(
    path: Path,
    *,
    overrides: list[str] = (),
    output_dir: Path = Path("output"),
    input_dir: Path = Path("input"),
    models_dir: Path | None = None,
) -> dict[str, dict]:
    """Validate and run a workflow file headless. Returns each output node's saved files."""
    with headless_models_dir(models_dir):
        return _run(path, overrides, Path(output_dir), Path(input_dir))


def _run(path: Path, overrides: list[str], output_dir: Path, input_dir: Path) -> dict[str, dict]:
    raw = read_workflow_json(Path(path))
    registry = {**NODE_CLASS_MAPPINGS, **io_nodes(input_dir, output_dir, raw)}
    graph = parse_workflow(raw, registry)
    for text in overrides:
        node_id, name, value = parse_override(text)
        if node_id not in graph:
            raise WorkflowError(f"--set {text}: the workflow has no node {node_id} "
                                f"(its nodes: {', '.join(sorted(graph, key=str))}).")
        node = graph[node_id]
        declared = _input_names(registry.get(node.class_type))
        if declared is not None and name not in declared:
            raise WorkflowError(f"--set {text}: {node.label} has no input '{name}' "
                                f"(its inputs: {', '.join(declared)}).")
        if isinstance(node.inputs.get(name), Link):
            raise WorkflowError(f"--set {text}: input '{name}' of {node.label} is linked, not a value.")
        node.inputs[name] = value
    return run_graph(graph, registry)


def _input_names(node_class) -> list[str] | None:
    """The inputs a node type declares (None for an unknown type: validation reports it)."""
    if node_class is None:
        return None
    spec = node_class.INPUT_TYPES()
    return [*(spec.get("required") or {}), *(spec.get("optional") or {})]
