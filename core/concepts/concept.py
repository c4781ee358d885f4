"""A learned concept: one self-describing artifact (weights + what they were made for).

The tensors are kept in three namespaces, one per kind of change a method can make:
- `embedding.te{i}`: the trigger token's vectors for text encoder i, [n_vectors, dim];
- `lora.{module}.down` / `lora.{module}.up` (+ one `alpha` per module in `Concept.lora_alpha`): a
  low-rank delta `W' = W + up @ down * alpha / rank` on a Linear module of the UNet (`unet.` names) or
  of a text encoder (`te{i}.` names);
- `delta.{parameter}`: a full weight offset `W' = W + delta` (attention-only and full fine-tunes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

FORMAT_VERSION = 1
KINDS = ("embedding", "lora", "delta")


@dataclass
class Concept:
    name: str
    method: str  # lipschitz, dreambooth_lora, dreambooth_full, dreambooth_prior, textual_inversion, ...
    family: str  # the model family it was made for (sd1, sd2, sdxl, world)
    base_fingerprint: str  # Model.fingerprint() of the base it was trained on
    trigger: str
    class_word: str
    tensors: dict[str, torch.Tensor]
    lora_rank: int = 0
    lora_alpha: float = 0.0
    parameters: dict = field(default_factory=dict)  # how it was trained (steps, lr, lambda, ...)

    @property
    def kind(self) -> str:
        """What the concept changes beyond its token: 'lora', 'delta' or just the 'embedding'."""
        if any(k.startswith("lora.") for k in self.tensors):
            return "lora"
        if any(k.startswith("delta.") for k in self.tensors):
            return "delta"
        return "embedding"

    def embeddings(self) -> list[torch.Tensor]:
        return [self.tensors[k] for k in sorted(k for k in self.tensors if k.startswith("embedding.te"))]

    def lora_modules(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """module name -> (down [r, in], up [out, r])."""
        names = sorted({k[len("lora."):-len(".down")] for k in self.tensors if k.startswith("lora.") and
                        k.endswith(".down")})
        return {n: (self.tensors[f"lora.{n}.down"], self.tensors[f"lora.{n}.up"]) for n in names}

    def deltas(self) -> dict[str, torch.Tensor]:
        return {k[len("delta."):]: v for k, v in self.tensors.items() if k.startswith("delta.")}

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    def metadata(self) -> dict[str, str]:
        info = {
            "format_version": FORMAT_VERSION, "name": self.name, "method": self.method, "family": self.family,
            "base_fingerprint": self.base_fingerprint, "trigger": self.trigger, "class_word": self.class_word,
            "lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha, "parameters": self.parameters,
        }
        return {"conceptkit": json.dumps(info)}

    def describe(self) -> str:
        return f"concept '{self.name}' ({self.method}, trigger '{self.trigger}', made for {self.family})"
