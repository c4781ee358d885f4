"""The rainbow memory bank (METHODS.md §5): what a memory keeps of its concepts instead of their training images.

- Long-term memory, per concept: its prompts and its stored features (the mean pooled features of the images it
  was learned from; the features are a frozen image backbone's: the world's VAE encoder, a CLIP vision model on
  real models, never the identity network, which is the metric).
- Short-term memory: generated samples of the concepts with their prompts, replayed when a later concept is
  learned (task-aware memory enhancement).
When a concept is learned, candidates are generated for its prompts and scored
    score = cos(f, stored features of its concept) - beta * max over other concepts cos(f, their features)
(our reading of "similarity to the concept against other concepts'"); its best `keep` are kept. Earlier
concepts keep theirs (learning.refresh_bank).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ...errors import ModelLoadError
from ...files import write_safetensors
from ...safetensors_io import load_safetensors, read_safetensors_metadata

METADATA_KEY = "conceptkit_memory_bank"
DEFAULT_BETA = 0.5


@dataclass
class MemoryBank:
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # trigger -> stored features [D]
    prompts: dict[str, list[str]] = field(default_factory=dict)  # trigger -> its prompts (with the trigger)
    images: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 3, 1, 1))  # short-term [M, 3, H, W] -1..1
    # (stored on disk as uint8, as images are)
    image_prompts: list[str] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)  # the trigger each image shows
    backbone: str = ""  # the image backbone the features are from ("" before the first concept)

    @classmethod
    def empty(cls) -> MemoryBank:
        return cls()

    def replay(self, exclude: str = "") -> tuple[torch.Tensor, list[str], list[str]]:
        """The short-term samples of every concept but `exclude`: images, prompts, owners."""
        keep = [i for i, owner in enumerate(self.owners) if owner != exclude]
        return self.images[keep], [self.image_prompts[i] for i in keep], [self.owners[i] for i in keep]

    def scores(self, candidates: torch.Tensor, owner: str, beta: float = DEFAULT_BETA) -> torch.Tensor:
        """The rainbow score of candidate features [M, D] for concept `owner`."""
        own = F.cosine_similarity(candidates, self.features[owner][None], dim=1)
        others = [F.cosine_similarity(candidates, f[None], dim=1) for t, f in self.features.items() if t != owner]
        return own - beta * torch.stack(others).amax(0) if others else own

    def without(self, owner: str) -> MemoryBank:
        """This bank without `owner`: its stored features, its prompts and its short-term samples."""
        keep = [i for i, o in enumerate(self.owners) if o != owner]
        return replace(self, features={t: f for t, f in self.features.items() if t != owner},
                       prompts={t: p for t, p in self.prompts.items() if t != owner},
                       images=self.images[keep], image_prompts=[self.image_prompts[i] for i in keep],
                       owners=[self.owners[i] for i in keep])

    def with_samples(self, owner: str, images: torch.Tensor, prompts: list[str]) -> MemoryBank:
        """This bank with `owner`'s short-term samples replaced by `images`."""
        keep = [i for i, o in enumerate(self.owners) if o != owner]
        old = self.images[keep] if keep else images[:0]
        return replace(self, images=torch.cat([old, images.float().cpu()]),
                       image_prompts=[self.image_prompts[i] for i in keep] + list(prompts),
                       owners=[self.owners[i] for i in keep] + [owner] * len(images))

    def save(self, path: Path) -> Path:
        triggers = list(self.features)
        pixels = ((self.images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # 4x smaller on disk
        tensors = {"images": pixels.contiguous()}
        tensors.update({f"features.{i}": self.features[t].float().contiguous() for i, t in enumerate(triggers)})
        info = {"triggers": triggers, "prompts": [self.prompts.get(t, []) for t in triggers],
                "image_prompts": self.image_prompts, "owners": self.owners, "backbone": self.backbone}
        return write_safetensors(Path(path), tensors, {METADATA_KEY: json.dumps(info)})

    @classmethod
    def load(cls, path: Path) -> MemoryBank:
        path = Path(path)
        metadata = read_safetensors_metadata(path)
        try:
            info = json.loads(metadata[METADATA_KEY])
            tensors = load_safetensors(path)
            triggers = list(info["triggers"])
            images = tensors["images"].float() / 127.5 - 1
            return cls({t: tensors[f"features.{i}"] for i, t in enumerate(triggers)},
                       {t: list(p) for t, p in zip(triggers, info["prompts"], strict=True)}, images,
                       list(info["image_prompts"]), list(info["owners"]), str(info.get("backbone", "")))
        except (KeyError, ValueError, TypeError) as e:
            raise ModelLoadError(f"{path}: the memory bank is damaged ({e}).") from None
