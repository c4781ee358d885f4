"""Run a validated graph: each node once, in dependency order."""

from __future__ import annotations

import logging

from ..core.errors import ConceptKitError, WorkflowError
from .graph import Link, Node
from .validate import validate

log = logging.getLogger("conceptkit.runner")


def run_graph(graph: dict[str, Node], registry: dict) -> dict[str, dict]:
    """Validate, then execute. Returns each output node's UI result ({"images": [...]} for savers)."""
    order, problems = validate(graph, registry)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise WorkflowError(f"the workflow does not validate; nothing was run:\n{lines}")
    results: dict[str, tuple] = {}
    ui: dict[str, dict] = {}
    for node_id in order:
        node = graph[node_id]
        node_class = registry[node.class_type]
        kwargs = {name: results[v.node_id][v.slot] if isinstance(v, Link) else v for name, v in node.inputs.items()}
        log.info("running %s", node.label)
        try:
            output = getattr(node_class(), node_class.FUNCTION)(**kwargs)
        except ConceptKitError as e:
            raise WorkflowError(f"{node.label} failed: {e}") from e
        if isinstance(output, dict):
            ui[node_id] = output.get("ui", {})
            output = output.get("result", ())
        results[node_id] = tuple(output or ())
    return ui
