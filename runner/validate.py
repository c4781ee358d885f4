"""Validate a graph the way ComfyUI does before anything runs: node types exist, required inputs
are given, links carry the declared types, numbers are in range, combo values are listed, and each
node's own VALIDATE_INPUTS (given the widget values it names) answers True."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from ..nodes.inputs import WIDGET_KINDS, coerce_widget
from .graph import Link, Node


@dataclass(frozen=True)
class Problem:
    node: Node
    input: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.node.label}, input '{self.input}'" if self.input else self.node.label
        return f"{where}: {self.message}"


def types_match(output_type: str, input_type: str) -> bool:
    if "*" in (output_type, input_type):
        return True
    return bool(set(output_type.split(",")) & set(input_type.split(",")))


def validate(graph: dict[str, Node], registry: dict) -> tuple[list[str], list[Problem]]:
    """(order of node ids to run, problems). Only nodes that feed an output node are checked and run."""
    problems: list[Problem] = []
    for node in graph.values():
        if node.class_type not in registry:
            problems.append(Problem(node, None, f"unknown node type '{node.class_type}' "
                                                "(is the custom node pack that provides it installed?)"))
    outputs = [n for n in graph.values() if getattr(registry.get(n.class_type), "OUTPUT_NODE", False)]
    if not outputs and not problems:
        no_output = Problem(Node("-", "workflow"), None, "the workflow has no output node "
                                                        "(add a Save Image or Preview Image node)")
        return [], [no_output]

    order: list[str] = []
    state: dict[str, str] = {}
    for output in outputs:  # depth first, inputs before the node; a loop, not recursion (any chain length)
        stack: list[tuple[Node, bool]] = [(output, False)]
        while stack:
            node, inputs_done = stack.pop()
            node_class = registry.get(node.class_type)
            if inputs_done:
                if node_class is not None:
                    _node_validation(node, node_class, problems)
                state[node.id] = "done"
                order.append(node.id)
                continue
            if state.get(node.id) == "done":
                continue
            if state.get(node.id) == "visiting":  # still waiting for its inputs: we came back through one
                problems.append(Problem(node, None, "the workflow has a cycle through this node"))
                continue
            state[node.id] = "visiting"
            stack.append((node, True))
            if node_class is not None:
                stack.extend((origin, False) for origin in reversed(_check_inputs(node, node_class, graph, registry,
                                                                                   problems)))
    return order, problems


def _node_validation(node: Node, node_class, problems: list[Problem]) -> None:
    """ComfyUI's VALIDATE_INPUTS: called with the values (not links) it names; anything but True is a problem."""
    check = getattr(node_class, "VALIDATE_INPUTS", None)
    if check is None:
        return
    wanted = inspect.signature(check).parameters
    values = {k: v for k, v in node.inputs.items() if k in wanted and not isinstance(v, Link)}
    if set(wanted) - set(values):
        return  # a named input is linked: ComfyUI checks it when its value exists
    answer = check(**values)
    if answer is not True:
        problems.append(Problem(node, None, str(answer)))


def _check_inputs(node, node_class, graph, registry, problems) -> list[Node]:
    """Check the node's inputs; returns the nodes its links come from."""
    spec = node_class.INPUT_TYPES()
    declared = {**{k: (v, True) for k, v in (spec.get("required") or {}).items()},
                **{k: (v, False) for k, v in (spec.get("optional") or {}).items()}}
    origins = []
    for name in node.inputs:
        if name not in declared:
            problems.append(Problem(node, name, f"is not an input of this node (its inputs: {', '.join(declared)})"))
    for name, ((kind, *rest), required) in declared.items():
        options = rest[0] if rest else {}
        if name not in node.inputs:
            if required:
                what = "is not connected" if isinstance(kind, str) and kind not in WIDGET_KINDS else "has no value"
                problems.append(Problem(node, name, f"required input {what}"))
            continue
        value = node.inputs[name]
        if isinstance(value, Link):
            origin = graph.get(value.node_id)
            if origin is None:
                problems.append(Problem(node, name, f"is linked to node {value.node_id}, which is missing or muted"))
                continue
            origin_class = registry.get(origin.class_type)
            if origin_class is None:
                continue  # reported as an unknown node type
            returns = origin_class.RETURN_TYPES
            if value.slot >= len(returns):
                problems.append(Problem(node, name, f"is linked to output {value.slot} of {origin.label}, "
                                                    f"which has only {len(returns)} outputs"))
                continue
            out_type = returns[value.slot]
            in_type = "COMBO" if isinstance(kind, list) else kind
            if not types_match(out_type, in_type):
                problems.append(Problem(node, name, f"expects {in_type} but is linked to {origin.label}, "
                                                    f"which gives {out_type}"))
            origins.append(origin)
            continue
        if not isinstance(kind, list) and kind not in WIDGET_KINDS:
            problems.append(Problem(node, name, f"expects a {kind} link, not the value {value!r}"))
            continue
        try:
            node.inputs[name] = coerce_widget(value, kind, options)
        except (ValueError, TypeError) as e:
            problems.append(Problem(node, name, str(e)))
    return origins
