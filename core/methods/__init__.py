"""The five methods, one folder each: its math, defaults and recipes, over the shared services. Methods never
import each other; the services never import a method.

What a method adds to a shared service is in one table here, installed by the engine's package
(`conceptkit.core`) as it loads: the concept groups (what applying a concept's `group.{name}.*` tensors does
to a model; a group not listed is data its method keeps, as a memory's bank)."""

from ..concepts import register_concept_group
from . import concept_encoder

CONCEPT_GROUPS = {concept_encoder.GROUP: concept_encoder.enter_encoder_concept}


def install() -> None:
    """Give the shared services what the methods add to them (the table above)."""
    for name, enter in CONCEPT_GROUPS.items():
        register_concept_group(name, enter)
