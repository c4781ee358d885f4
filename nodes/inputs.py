"""What a node accepts. ComfyUI checks a queued graph's values against each node's INPUT_TYPES before it runs
anything; a node called from a script gets the same checks here, at the call, with the same one-line answers
(a negative learning rate, a NaN, images given as a list or None, an input the node does not declare)."""

from __future__ import annotations

import functools
import inspect
import math

import torch

from ..core.errors import InputError

WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN")


def coerce_widget(value, kind, options: dict):
    """`value` converted to the declared widget type (a list: a combo's choices), or ValueError with the reason."""
    if isinstance(kind, list):
        if value not in kind:
            shown = ", ".join(map(str, kind[:8])) + (", ..." if len(kind) > 8 else "")
            raise ValueError(f"'{value}' is not one of the choices ({shown})")
        return value
    if kind == "INT":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise ValueError(f"{value!r} is not a whole number")
        value = int(value)
    elif kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{value!r} is not a number")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number")
    elif kind == "BOOLEAN":
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not true or false")
    elif kind == "STRING":
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not text")
        if "\x00" in value:
            raise ValueError("contains a NUL character (\\x00); remove it")
    if kind in ("INT", "FLOAT"):
        if "min" in options and value < options["min"]:
            raise ValueError(f"{value} is smaller than the minimum {options['min']}")
        if "max" in options and value > options["max"]:
            raise ValueError(f"{value} is bigger than the maximum {options['max']}")
    return value


def check_socket(value, kind: str) -> None:
    """A linked input's value: present, and an IMAGE a [batch, height, width, channels] tensor (ComfyUI's)."""
    if value is None:
        raise ValueError("is not connected (got None)")
    if kind == "IMAGE":
        if not isinstance(value, torch.Tensor) or value.ndim != 4 or value.shape[-1] not in (1, 3, 4):
            got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else \
                f"a {type(value).__name__}"
            raise ValueError(f"expects a ComfyUI IMAGE (a [batch, height, width, channels] tensor), got {got}; "
                             "stack the images with torch.stack, or load them with a Load Image node")


def declared_inputs(spec: dict) -> dict[str, tuple]:
    """A node's required and optional inputs, from its INPUT_TYPES()."""
    return {**(spec.get("required") or {}), **(spec.get("optional") or {})}


def _label(node_class) -> str:
    return node_class.__name__.removeprefix("ConceptKit") or node_class.__name__


def check_call(node_class, spec: dict, values: dict) -> dict:
    """The values of one call (`spec`: the node's INPUT_TYPES()), checked and converted as ComfyUI's validation
    would; InputError names the first wrong one."""
    declared = declared_inputs(spec)
    values = {k: v for k, v in values.items() if k not in (spec.get("hidden") or {})}
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise InputError(f"{_label(node_class)}: '{unknown[0]}' is not an input of this node (its inputs: "
                         f"{', '.join(declared)}).")
    checked = dict(values)
    for name, value in values.items():
        kind, *rest = declared[name]
        options = rest[0] if rest else {}
        try:
            if isinstance(kind, list) or kind in WIDGET_KINDS:
                checked[name] = coerce_widget(value, kind, options)
            elif isinstance(kind, str):
                check_socket(value, kind)
        except ValueError as e:
            raise InputError(f"{_label(node_class)}, input '{name}': {e}.") from None
    return checked


def widget_defaults(spec: dict) -> dict:
    """The declared default of every widget input that has one (a combo without one: its first choice)."""
    found = {}
    for name, (kind, *rest) in declared_inputs(spec).items():
        options = rest[0] if rest else {}
        if (isinstance(kind, list) or kind in WIDGET_KINDS) and "default" in options:
            found[name] = options["default"]
        elif isinstance(kind, list) and kind:
            found[name] = kind[0]
    return found


def checked_inputs(node_class) -> None:
    """Make every call of the node's FUNCTION check its inputs first (once per class)."""
    function = getattr(node_class, node_class.FUNCTION)
    if getattr(function, "checks_inputs", False):
        return
    signature = inspect.signature(function)

    @functools.wraps(function)
    def call(self, *args, **kwargs):
        spec = node_class.INPUT_TYPES()  # once per call: it may list model files
        try:
            bound = signature.bind_partial(self, *args, **kwargs)
        except TypeError as e:  # an input the node does not declare is named by check_call; else Python's reason
            check_call(node_class, spec, {k: v for k, v in kwargs.items() if k not in signature.parameters})
            raise InputError(f"{_label(node_class)}: {e}; see the node's inputs.") from None
        values = {k: v for k, v in bound.arguments.items() if k != "self"}
        extra = values.pop(next((k for k, p in signature.parameters.items() if p.kind is p.VAR_KEYWORD), ""), {})
        values = check_call(node_class, spec, {**values, **extra})
        missing = [k for k, p in signature.parameters.items() if k != "self" and k not in values
                   and p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if missing:
            defaults = widget_defaults(spec)  # as the editor fills a new node's widgets
            values.update({k: defaults[k] for k in missing if k in defaults})
            missing = [k for k in missing if k not in defaults]
        if missing:
            raise InputError(f"{_label(node_class)}: required input '{missing[0]}' has no value.")
        return function(self, **values)

    call.checks_inputs = True
    setattr(node_class, node_class.FUNCTION, call)
