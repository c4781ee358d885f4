"""The five methods, one folder each: its math, defaults and recipes, over the shared services.
Methods never import each other; the services never import a method."""

from . import concept_encoder  # noqa: F401,E402  (methods register their concept groups and trainable sets)
