"""Frozen image backbones: features of images that methods read (an encoder's input, a memory bank's scores).

- World: the world model's own VAE encoder (its mid-block feature map) on the image's subject (its foreground
  cropped and enlarged to the model's size: on the whole scene the features cannot tell creatures apart, on the
  subject they can). Never the identity network or anything trained with its objective: that network is the
  metric.
- Real models: a CLIP vision model, from ComfyUI's `clip_vision` folder (a node's CLIP_VISION input) or a
  local transformers folder (headless). Never downloaded.
A backbone gives features of images [B, 3, H, W] in -1..1: a map [B, C, h, w] (`spatial`) or a vector [B, C];
`pooled` gives a vector either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, ModelLoadError
from .model import Model

WORLD_BACKBONE = "world_vae_subject"
CLIP_BACKBONE = "clip_vision"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageBackbone:
    name: str  # WORLD_BACKBONE | CLIP_BACKBONE
    spatial: bool
    channels: int
    encode: Callable[[torch.Tensor], torch.Tensor]  # images [B, 3, H, W] in -1..1 -> features (no gradients)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.encode(images).float()

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """One vector per image: a map's mean and max over its positions, side by side; a vector as it is."""
        features = self.features(images)
        if features.ndim == 4:
            return torch.cat([features.mean((2, 3)), features.amax((2, 3))], dim=1)
        return features


def world_backbone(model: Model) -> ImageBackbone:
    """The world VAE encoder's mid-block features of each image's subject, [B, C, H/f, W/f]."""
    from ..world.checkers import subject_crop

    encoder = model.vae.encoder

    def encode(images: torch.Tensor) -> torch.Tensor:
        pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1)
        subjects = [subject_crop(image, images.shape[-1]) for image in pixels.numpy()]
        subjects = torch.from_numpy(np.stack(subjects)).permute(0, 3, 1, 2).float() / 127.5 - 1
        x = encoder.conv_in(subjects.to(model.vae.device, model.vae.dtype))
        for block in encoder.down_blocks:
            x = block(x)
        return encoder.mid_block(x)

    return ImageBackbone(WORLD_BACKBONE, True, model.vae.config.block_out_channels[-1], encode)


def clip_backbone(vision_model) -> ImageBackbone:
    """A transformers CLIPVisionModel(WithProjection): its image embedding (or pooled output)."""
    size = vision_model.config.image_size
    parameter = next(vision_model.parameters())

    def encode(images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate((images.float() + 1) / 2, size=(size, size), mode="bicubic", align_corners=False,
                          antialias=True)
        mean = torch.tensor(CLIP_MEAN, device=x.device)[:, None, None]
        std = torch.tensor(CLIP_STD, device=x.device)[:, None, None]
        out = vision_model(pixel_values=((x - mean) / std).to(parameter))
        return out.image_embeds if getattr(out, "image_embeds", None) is not None else out.pooler_output

    channels = getattr(vision_model.config, "projection_dim", None) if hasattr(vision_model, "visual_projection") \
        else vision_model.config.hidden_size
    return ImageBackbone(CLIP_BACKBONE, False, int(channels), encode)


def load_clip_vision(folder: Path) -> ImageBackbone:
    """A CLIP vision model from a local transformers folder (config.json + safetensors weights)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} is not a CLIP vision model folder (no config.json); give the folder of a "
                             "transformers CLIPVisionModelWithProjection, e.g. an image encoder saved with "
                             "save_pretrained.")
    from transformers import CLIPVisionModelWithProjection

    try:
        vision = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{folder}: could not load a CLIP vision model ({e}).") from None
    return clip_backbone(vision.eval().requires_grad_(False))


def backbone_for(model: Model, clip_vision: ImageBackbone | None, needed_by: str) -> ImageBackbone:
    """The backbone a method (`needed_by`, for the message) reads images of `model` through: the world's VAE, or
    the CLIP vision model given."""
    if model.family == "world":
        return world_backbone(model)
    if clip_vision is None:
        raise InputError(f"a {model.family} model needs a CLIP vision model for {needed_by}: connect a "
                         "Load CLIP Vision node (a model from ComfyUI's clip_vision folder), or give --clip-vision "
                         "FOLDER (a local transformers CLIPVisionModelWithProjection).")
    return clip_vision
