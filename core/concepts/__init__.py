"""Concepts: learned things as self-describing files, applied to models without copying them."""

from .apply import AppliedConcept, applied_concepts, apply_concept, register_concept_group
from .concept import Concept, Trigger
from .export import EXPORT_FORMATS, export_concept
from .files import concept_path, load_concept, save_concept

__all__ = ["EXPORT_FORMATS", "AppliedConcept", "Concept", "Trigger", "applied_concepts", "apply_concept",
           "concept_path", "export_concept", "load_concept", "register_concept_group", "save_concept"]
