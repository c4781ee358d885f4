"""CLIP-T, CLIP-I and DINO with real weights the user has locally (never downloaded).

- CLIP-T: cosine similarity of a CLIP image embedding and its prompt's text embedding.
- CLIP-I: cosine similarity of CLIP image embeddings of generated and reference images.
- DINO: cosine similarity of DINO (ViT / DINOv2) [CLS] features of generated and reference images.
Images are float [B, H, W, 3] in 0..1 (ComfyUI's layout).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ModelLoadError
from ..model.image_features import CLIP_MEAN, CLIP_STD

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _prepare(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    x = images.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _pooled(output) -> torch.Tensor:
    """transformers >= 5 returns a model output whose pooler_output is the projection; 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _local(cls, folder: Path, what: str):
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: no {what} model there (expected a folder with config.json and weights).")
    try:
        return cls.from_pretrained(folder, local_files_only=True, use_safetensors=True).eval()
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{folder}: could not load the {what} model ({str(e).splitlines()[0]}).") from None


class ClipScorer:
    def __init__(self, folder: Path):
        from transformers import CLIPModel, CLIPTokenizer

        self.model = _local(CLIPModel, folder, "CLIP")
        self.tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        self.size = self.model.config.vision_config.image_size

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        pixels = _prepare(images, self.size, CLIP_MEAN, CLIP_STD)
        return F.normalize(_pooled(self.model.get_image_features(pixel_values=pixels)), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", truncation=True,
                             max_length=self.model.config.text_config.max_position_embeddings, return_tensors="pt")
        return F.normalize(_pooled(self.model.get_text_features(input_ids=ids.input_ids)), dim=-1)

    def clip_t(self, images: torch.Tensor, prompts: list[str]) -> float:
        """Mean image-prompt cosine similarity (prompts: one per image)."""
        return float((self.image_embeddings(images) * self.text_embeddings(prompts)).sum(-1).mean())

    def clip_i(self, images: torch.Tensor, references: torch.Tensor) -> float:
        """Mean cosine similarity over all (generated, reference) pairs."""
        return float((self.image_embeddings(images) @ self.image_embeddings(references).T).mean())


class DinoScorer:
    def __init__(self, folder: Path):
        from transformers import AutoModel

        self.model = _local(AutoModel, folder, "DINO")
        self.size = getattr(self.model.config, "image_size", 224)

    @torch.no_grad()
    def embeddings(self, images: torch.Tensor) -> torch.Tensor:
        pixels = _prepare(images, self.size, IMAGENET_MEAN, IMAGENET_STD)
        return F.normalize(self.model(pixel_values=pixels).last_hidden_state[:, 0], dim=-1)

    def dino(self, images: torch.Tensor, references: torch.Tensor) -> float:
        return float((self.embeddings(images) @ self.embeddings(references).T).mean())
