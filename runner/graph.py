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


def read_workflow_json(path: Path) -> object:
    """The JSON of a workflow file (UTF-8, a byte-order mark allowed), or a WorkflowError saying what is wrong."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise WorkflowError(f"{path}: no such workflow file.") from None
    except IsADirectoryError:
        raise WorkflowError(f"{path} is a folder; give the workflow's .json file.") from None
    except OSError as e:
        raise WorkflowError(f"{path}: cannot be read ({e.strerror or e}).") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise WorkflowError(f"{path}: not UTF-8 text; ComfyUI saves workflows as UTF-8 JSON.") from None
    if not text.strip():
        raise WorkflowError(f"{path} is empty; save the workflow again from ComfyUI.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkflowError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from None
    except RecursionError:
        raise WorkflowError(f"{path}: the JSON is nested too deeply to be a workflow.") from None


def parse_workflow(data: object, registry: dict) -> dict[str, Node]:
    if isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data:
        return _from_ui(data, registry)
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return _from_api(data)
    raise WorkflowError("not a ComfyUI workflow: expected the UI format (nodes + links) or the API format.")


def _from_api(data: dict) -> dict[str, Node]:
    graph = {}
    for node_id, spec in data.items():
        if not isinstance(spec.get("class_type"), str):
            raise WorkflowError(f"node {node_id}: its class_type is not a node type name.")
        if not isinstance(spec.get("inputs", {}), dict):
            raise WorkflowError(f"node {node_id} ({spec['class_type']}): its inputs are not an object of "
                                "name: value pairs.")
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
                # as ComfyUI's frontend: declared, else any INT named seed or noise_seed has the control
                control = kind == "INT" and options.get("control_after_generate", name in ("seed", "noise_seed"))
                names.append((name, bool(control)))
    return names


LINK_KEYS = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")


def _ui_nodes(data: dict) -> dict[str, dict]:
    raw_nodes: dict[str, dict] = {}
    for position, raw in enumerate(data["nodes"]):
        if not isinstance(raw, dict):
            raise WorkflowError(f"entry {position} of 'nodes' is not a node (an object with id and type).")
        if not isinstance(raw.get("id"), (int, str)) or isinstance(raw.get("id"), bool):
            raise WorkflowError(f"entry {position} of 'nodes' has no id; save the workflow again from ComfyUI.")
        if not isinstance(raw.get("type"), str):
            raise WorkflowError(f"node {raw['id']} has no type (the node's class name).")
        if str(raw["id"]) in raw_nodes:
            raise WorkflowError(f"two nodes have the id {raw['id']}; each node needs its own id.")
        slots = raw.get("inputs") or []
        if not isinstance(slots, list) or not all(isinstance(i, dict) for i in slots):
            raise WorkflowError(f"node {raw['id']} ({raw['type']}): its inputs are not a list of input slots.")
        raw_nodes[str(raw["id"])] = raw
    return raw_nodes


def _ui_links(data: dict) -> dict:
    links = {}
    if not isinstance(data.get("links") or [], list):
        raise WorkflowError("'links' is not a list of links.")
    for position, entry in enumerate(data.get("links") or []):
        if isinstance(entry, dict):
            entry = [entry.get(k) for k in LINK_KEYS]
        if not isinstance(entry, list) or len(entry) < len(LINK_KEYS):
            raise WorkflowError(f"link entry {position} is not [id, origin, origin slot, target, target slot, type].")
        link_id, origin, origin_slot, _target, _slot, link_type = entry[:6]
        if not isinstance(origin_slot, int) or isinstance(origin_slot, bool) or origin_slot < 0:
            raise WorkflowError(f"link {link_id}: its origin slot {origin_slot!r} is not a slot number.")
        links[link_id] = Link(str(origin), origin_slot, link_type)
    return links


def _from_ui(data: dict, registry: dict) -> dict[str, Node]:
    raw_nodes = _ui_nodes(data)
    links = _ui_links(data)

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
            if not isinstance(slot.get("name"), str):
                raise WorkflowError(f"{node.label}: a linked input slot has no name.")
            if slot["link"] not in links:
                raise WorkflowError(f"{node.label}: input '{slot['name']}' refers to link {slot['link']}, "
                                    "which the file does not define.")
            resolved = resolve(links[slot["link"]])
            if resolved is not None:
                node.inputs[slot["name"]] = resolved
        graph[node_id] = node
    return graph
