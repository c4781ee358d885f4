"""Workflow files -> one graph form: {node_id: Node}. Reads ComfyUI's UI format (what the editor
saves) and its API format (what "Export (API)" saves)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import WorkflowError

FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
MODE_NEVER, MODE_BYPASS = 2, 4
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@dataclass(frozen=True)
class Link:
    node_id: str
    slot: int
    type: str | None = None  # the type the file says the link carries (UI format)


@dataclass
class Node:
    id: str
    class_type: str
    inputs: dict[str, object] = field(default_factory=dict)  # value or Link
    title: str = ""

    @property
    def label(self) -> str:
        return f"node {self.id} ({self.title or self.class_type})"


def load_workflow(path: Path, registry: dict) -> dict[str, Node]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise WorkflowError(f"{path}: no such workflow file.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorkflowError(f"{path}: not valid JSON ({e}).") from None
    return parse_workflow(data, registry)


def parse_workflow(data: object, registry: dict) -> dict[str, Node]:
    if isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data:
        return _from_ui(data, registry)
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return _from_api(data)
    raise WorkflowError("not a ComfyUI workflow: expected the UI format (nodes + links) or the API format.")


def _from_api(data: dict) -> dict[str, Node]:
    graph = {}
    for node_id, spec in data.items():
        inputs = {}
        for name, value in (spec.get("inputs") or {}).items():
            is_link = isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)
            inputs[name] = Link(str(value[0]), value[1]) if is_link else value
        title = (spec.get("_meta") or {}).get("title", "")
        graph[str(node_id)] = Node(str(node_id), spec["class_type"], inputs, title)
    return graph


def widget_names(node_class) -> list[tuple[str, bool]]:
    """(input name, has a 'control after generate' value after it) for each widget input, in order."""
    names = []
    spec = node_class.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, declared in (spec.get(section) or {}).items():
            kind = declared[0]
            options = declared[1] if len(declared) > 1 else {}
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                control = kind == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed"))
                names.append((name, bool(control)))
    return names


def _from_ui(data: dict, registry: dict) -> dict[str, Node]:
    raw_nodes = {str(n["id"]): n for n in data["nodes"]}
    links = {}
    for entry in data.get("links") or []:
        if isinstance(entry, dict):
            entry = [entry["id"], entry["origin_id"], entry["origin_slot"], entry["target_id"], entry["target_slot"],
                     entry.get("type")]
        link_id, origin, origin_slot, _target, _slot, link_type = entry[:6]
        links[link_id] = Link(str(origin), int(origin_slot), link_type)

    def resolve(link: Link) -> Link | None:
        """Follow Reroutes and bypassed nodes back to the node that really produces the value."""
        seen = set()
        while True:
            origin = raw_nodes.get(link.node_id)
            if origin is None or link.node_id in seen:
                return link
            seen.add(link.node_id)
            if origin.get("type") == "PrimitiveNode":
                return None  # its value is already in the target's widgets_values
            if origin.get("type") == "Reroute" or origin.get("mode") == MODE_BYPASS:
                upstream = [i for i in origin.get("inputs") or [] if i.get("link") is not None
                            and (origin.get("type") == "Reroute" or i.get("type") == link.type)]
                if not upstream:
                    return link
                link = Link(links[upstream[0]["link"]].node_id, links[upstream[0]["link"]].slot, link.type)
                continue
            return link

    graph = {}
    for node_id, raw in raw_nodes.items():
        class_type = raw.get("type", "")
        if class_type in FRONTEND_ONLY or raw.get("mode") in (MODE_NEVER, MODE_BYPASS):
            continue
        node = Node(node_id, class_type, title=raw.get("title", ""))
        if class_type in registry:
            values = raw.get("widgets_values")
            if isinstance(values, dict):
                node.inputs.update(values)
            elif values:
                position = 0
                for name, control in widget_names(registry[class_type]):
                    if position < len(values):
                        node.inputs[name] = values[position]
                    position += 2 if control else 1
        for slot in raw.get("inputs") or []:
            if slot.get("link") is None:
                continue
            if slot["link"] not in links:
                raise WorkflowError(f"{node.label}: input '{slot['name']}' refers to link {slot['link']}, "
                                    "which the file does not define.")
            resolved = resolve(links[slot["link"]])
            if resolved is not None:
                node.inputs[slot["name"]] = resolved
        graph[node_id] = node
    return graph
