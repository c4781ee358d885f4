"""A learned concept: one self-describing artifact (weights + what they were made for).

A concept has one or more triggers (a new word and the class word it was learned beside) and its
tensors in namespaces, one per kind of change a method can make:
- `embedding.{k}.te{i}`: trigger k's vectors for text encoder i, [n_vectors, dim];
- `lora.{module}.down` / `lora.{module}.up` (+ one alpha for all modules, `Concept.lora_alpha`): a
  low-rank delta `W' = W + up @ down * alpha / rank` on a Linear module of the UNet (`unet.` names) or
  of a text encoder (`te{i}.` names);
- `delta.{parameter}`: a full weight offset `W' = W + delta` (attention-only and full fine-tunes);
- `group.{group}.{key}`: tensors a method keeps for itself (an encoder's image features, a memory's bank).
Format version 2; files of version 1 (one trigger, `embedding.te{i}`) are read as version 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

FORMAT_VERSION = 2
KINDS = ("embedding", "lora", "delta")


@dataclass(frozen=True)
class Trigger:
    word: str  # the new word, e.g. "<my-dog>"
    class_word: str  # what it is, e.g. "dog" (where its vector starts)


@dataclass
class Concept:
    name: str
    method: str  # lipschitz, dreambooth_lora, dreambooth_full, dreambooth_prior, textual_inversion, ...
    family: str  # the model family it was made for (sd1, sd2, sdxl, world)
    base_fingerprint: str  # Model.fingerprint() of the base it was trained on
    triggers: tuple[Trigger, ...]
    tensors: dict[str, torch.Tensor]
    lora_rank: int = 0
    lora_alpha: float = 0.0
    parameters: dict = field(default_factory=dict)  # how it was trained (steps, lr, lambda, ...)

    @property
    def trigger(self) -> str:
        """The first trigger's word: the one that names the concept ('' for a concept without a trigger)."""
        return self.triggers[0].word if self.triggers else ""

    @property
    def class_word(self) -> str:
        return self.triggers[0].class_word if self.triggers else ""

    @property
    def kind(self) -> str:
        """What the concept changes beyond its tokens: 'lora', 'delta' or just the 'embedding'."""
        if any(k.startswith("lora.") for k in self.tensors):
            return "lora"
        if any(k.startswith("delta.") for k in self.tensors):
            return "delta"
        return "embedding"

    def embeddings(self, trigger: int = 0) -> list[torch.Tensor]:
        """Trigger `trigger`'s vectors, one [n_vectors, dim] tensor per text encoder (empty if it has none)."""
        prefix = f"embedding.{trigger}.te"
        keys = sorted((k for k in self.tensors if k.startswith(prefix)), key=lambda k: int(k[len(prefix):]))
        return [self.tensors[k] for k in keys]

    def lora_modules(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """module name -> (down [r, in], up [out, r])."""
        names = sorted({k[len("lora."):-len(".down")] for k in self.tensors if k.startswith("lora.") and
                        k.endswith(".down")})
        return {n: (self.tensors[f"lora.{n}.down"], self.tensors[f"lora.{n}.up"]) for n in names}

    def deltas(self) -> dict[str, torch.Tensor]:
        return {k[len("delta."):]: v for k, v in self.tensors.items() if k.startswith("delta.")}

    def groups(self) -> list[str]:
        """The names of the method groups the concept holds."""
        return sorted({k.split(".")[1] for k in self.tensors if k.startswith("group.")})

    def group(self, name: str) -> dict[str, torch.Tensor]:
        """A method's own tensors (`group.{name}.{key}`), by key."""
        prefix = f"group.{name}."
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    def metadata(self) -> dict[str, str]:
        info = {
            "format_version": FORMAT_VERSION, "name": self.name, "method": self.method, "family": self.family,
            "base_fingerprint": self.base_fingerprint,
            "triggers": [{"word": t.word, "class_word": t.class_word} for t in self.triggers],
            "lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha, "parameters": self.parameters,
        }
        return {"conceptkit": json.dumps(info)}

    def describe(self) -> str:
        words = ", ".join(f"'{t.word}'" for t in self.triggers) or "none"
        return f"concept '{self.name}' ({self.method}, trigger {words}, made for {self.family})"
