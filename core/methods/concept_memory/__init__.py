"""Concept Memory (L2DM, METHODS.md §5): learn concepts one after another into a memory without forgetting, and
draw several of them in one image. `MemoryStore` (a crash-safe, versioned folder), `learn` (replay, elastic
distillation, the rainbow bank), `memory_model` (every concept applied, with the concept attention artist),
`export_memory` (one kohya LoRA or the tuned UNet, an embedding per trigger)."""

from .apply import export_memory, memory_model
from .artist import DEFAULT_ACTIVE_SHARE, DEFAULT_STEP_SIZE, ConceptAttentionArtist
from .bank import MemoryBank
from .learning import IF_LEARNED, LEARNING_RATES, LearnSettings, consolidate, learn
from .store import DEFAULT_TRAINS, TRAINS, MemoryState, MemoryStore

__all__ = ["DEFAULT_ACTIVE_SHARE", "DEFAULT_STEP_SIZE", "DEFAULT_TRAINS", "IF_LEARNED", "LEARNING_RATES", "TRAINS",
           "ConceptAttentionArtist", "LearnSettings", "MemoryBank", "MemoryState", "MemoryStore", "consolidate",
           "export_memory", "learn", "memory_model"]
