"""Apply Memory: a model with every concept of a memory (its consolidated weights and triggers) and the concept
attention artist for prompts that name them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...concepts import apply_concept
from ...model import Model, add_patch
from .artist import DEFAULT_ACTIVE_SHARE, DEFAULT_STEP_SIZE, ConceptAttentionArtist
from .store import MemoryState, MemoryStore


@dataclass(frozen=True)
class ArtistPatch:
    """Adds the artist to every sampling run of the model (no trigger of its own)."""

    concepts: tuple[tuple[str, str], ...]
    active_share: float
    step_size: float
    triggers: tuple[str, ...] = ()

    def enter(self, model, state) -> None:
        state.add_attention(ConceptAttentionArtist(self.concepts, self.active_share, self.step_size))


def memory_model(model: Model, memory: MemoryStore | MemoryState, *, strength: float = 1.0, artist: bool = True,
                 active_share: float = DEFAULT_ACTIVE_SHARE, step_size: float = DEFAULT_STEP_SIZE) -> Model:
    """`model` with the memory's concepts applied (the base is shared, not copied) and, with `artist`, the artist."""
    if isinstance(memory, MemoryStore):
        memory.check_fits(model)
        memory = memory.current()
    if memory.concept is None:
        return model
    applied = apply_concept(model, memory.concept, strength)
    if not artist or step_size == 0:
        return applied
    concepts = tuple((t.word, t.class_word) for t in memory.concept.triggers)
    return add_patch(applied, ArtistPatch(concepts, active_share, step_size))


def export_memory(memory: MemoryState, model: Model, folder: Callable[[str], Path], name: str,
                  if_exists: str = "counter") -> list:
    """The consolidated weights — one kohya LoRA (NAME.safetensors in folder("loras")) for a LoRA memory, the tuned
    UNet in diffusers format (NAME in folder("diffusers"), with every trigger's embedding) for a memory of weight
    offsets — and every trigger as an embedding (NAME_<trigger>.safetensors in folder("embeddings")); `folder`
    gives the folder of a kind of model file, as ComfyUI names them. Returns the paths written."""
    import re
    from dataclasses import replace

    from ...concepts.export import export_concept
    from ...errors import InputError

    if memory.concept is None:
        raise InputError("the memory holds no concept yet; learn one with Memory Learn first.")
    concept = memory.concept
    fmt, kind = ("kohya_lora", "loras") if concept.kind == "lora" else ("diffusers", "diffusers")
    written = [export_concept(concept, model, fmt, folder(kind), name, if_exists)]
    for k, trigger in enumerate(concept.triggers):
        vectors = {f"embedding.0.te{i}": v for i, v in enumerate(concept.embeddings(k))}
        alone = replace(concept, triggers=(trigger,), tensors=vectors, lora_rank=0, lora_alpha=0.0)
        word = re.sub(r"[^A-Za-z0-9_-]", "", trigger.word) or f"concept{k}"
        written.append(export_concept(alone, model, "embedding", folder("embeddings"), f"{name}_{word}", if_exists))
    return written
