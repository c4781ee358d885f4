"""Concept files: safetensors with the concept's description in the metadata (safetensors only)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelLoadError
from ..files import safe_file_name, write_safetensors
from ..safetensors_io import load_safetensors, read_safetensors_metadata
from .concept import FORMAT_VERSION, Concept, Trigger

CONCEPT_SUFFIX = ".safetensors"


def concept_path(folder: Path, name: str) -> Path:
    name = safe_file_name(name, "concept name")
    return Path(folder) / (name if name.endswith(CONCEPT_SUFFIX) else name + CONCEPT_SUFFIX)


def save_concept(concept: Concept, path: Path, if_exists: str = "error") -> Path:
    """Write `concept` to `path` (a taken name: see IF_EXISTS). Returns the path written."""
    return write_safetensors(path, concept.tensors, concept.metadata(), if_exists)


def _from_version_1(info: dict, tensors: dict) -> tuple[tuple[Trigger, ...], dict]:
    """Version 1 had one trigger (`trigger`, `class_word`) and its vectors under `embedding.te{i}`."""
    triggers = (Trigger(info["trigger"], info["class_word"]),) if info["trigger"] else ()
    renamed = {("embedding.0." + k[len("embedding."):] if k.startswith("embedding.te") else k): v
               for k, v in tensors.items()}
    return triggers, renamed


def load_concept(path: Path) -> Concept:
    """A concept file written by ConceptKit. Other LoRA / embedding files: see `import_kohya_lora`."""
    path = Path(path)
    metadata = read_safetensors_metadata(path)
    if "conceptkit" not in metadata:
        raise ModelLoadError(f"{path.name}: not a ConceptKit concept file (no 'conceptkit' metadata). "
                             "LoRA files from other tools load with import_kohya_lora.")
    try:
        info = json.loads(metadata["conceptkit"])
        version = int(info["format_version"])
        if version > FORMAT_VERSION:
            raise ModelLoadError(f"{path.name}: written by a newer ConceptKit (format {version}); update ConceptKit.")
        tensors = load_safetensors(path)
        if version == 1:
            triggers, tensors = _from_version_1(info, tensors)
        else:
            triggers = tuple(Trigger(t["word"], t["class_word"]) for t in info["triggers"])
        return Concept(name=info["name"], method=info["method"], family=info["family"],
                       base_fingerprint=info["base_fingerprint"], triggers=triggers, tensors=tensors,
                       lora_rank=int(info["lora_rank"]), lora_alpha=float(info["lora_alpha"]),
                       parameters=dict(info.get("parameters") or {}))
    except (KeyError, ValueError, TypeError) as e:
        raise ModelLoadError(f"{path.name}: the concept description is damaged ({e}); save the concept again.") \
            from None
