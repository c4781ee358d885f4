"""The headless workflow runner: `conceptkit run WORKFLOW.json`."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import WorkflowError
from ..nodes import NODE_CLASS_MAPPINGS
from ..nodes.comfy_adapter import headless_models_dir
from .execute import run_graph
from .graph import Link, load_workflow
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
    raw = json.loads(Path(path).read_text()) if Path(path).is_file() else None
    registry = {**NODE_CLASS_MAPPINGS, **io_nodes(input_dir, output_dir, raw)}
    graph = load_workflow(Path(path), registry)
    for text in overrides:
        node_id, name, value = parse_override(text)
        if node_id not in graph:
            raise WorkflowError(f"--set {text}: the workflow has no node {node_id} "
                                f"(its nodes: {', '.join(sorted(graph, key=str))}).")
        if isinstance(graph[node_id].inputs.get(name), Link):
            raise WorkflowError(f"--set {text}: input '{name}' of {graph[node_id].label} is linked, not a value.")
        graph[node_id].inputs[name] = value
    return run_graph(graph, registry)
