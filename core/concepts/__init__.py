"""Concepts: learned things as self-describing files, applied to models without copying them."""

from .apply import AppliedConcept, apply_concept, concepts_applied
from .concept import Concept
from .files import concept_path, load_concept, save_concept

__all__ = ["AppliedConcept", "Concept", "apply_concept", "concept_path", "concepts_applied", "load_concept",
           "save_concept"]
