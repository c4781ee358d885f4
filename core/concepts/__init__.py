"""Concepts: learned things as self-describing files, applied to models without copying them."""

from .apply import AppliedConcept, applied_concepts, apply_concept
from .concept import Concept, Trigger
from .files import concept_path, load_concept, save_concept

__all__ = ["AppliedConcept", "Concept", "Trigger", "applied_concepts", "apply_concept", "concept_path",
           "load_concept", "save_concept"]
