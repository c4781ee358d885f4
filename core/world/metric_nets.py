"""The two small networks behind the world metrics, trained on renders (tools/world/train_metric_nets.py) and
shipped.

- Shape classifier: a binary object mask (cropped to its box, 24x24) -> one of SHAPES.
- Identity network: a 64x64 image with one creature -> a unit embedding; two images of the same
  creature (any background, position, noise) land close, two creatures far apart.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from .vocabulary import SHAPES

log = logging.getLogger("conceptkit.world.metrics")
WEIGHTS_DIR = Path(__file__).parent / "weights"
MASK_SIDE = 24
IDENTITY_TRAIN_SEEDS = range(2_000_000, 2_050_000)  # disjoint from the model's and the held-out creatures
IDENTITY_VALIDATION_SEEDS = range(3_000_000, 3_000_200)


def shape_classifier() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3),
        nn.Flatten(), nn.Linear(32 * 9, 64), nn.ReLU(), nn.Linear(64, len(SHAPES)),
    )


class IdentityNet(nn.Module):
    def __init__(self, dim: int = 64):
        super().__init__()
        layers, channels = [nn.Conv2d(3, 24, 4, stride=2, padding=1), nn.GroupNorm(8, 24), nn.ReLU()], 24
        for width in (48, 64, 96):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(8, width), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels * 2, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, 64, 64] in 0..1 -> unit embeddings [B, dim]."""
        h = self.features(images * 2 - 1)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return F.normalize(self.head(pooled), dim=1)


def crop_mask(mask: np.ndarray) -> np.ndarray:
    """A binary mask cropped to its bounding box and resized to MASK_SIDE x MASK_SIDE (float)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros((MASK_SIDE, MASK_SIDE), np.float32)
    box = torch.from_numpy(mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1].astype(np.float32))
    return F.interpolate(box[None, None], size=(MASK_SIDE, MASK_SIDE), mode="area")[0, 0].numpy()


@cache
def load_shape_classifier() -> nn.Module:
    model = shape_classifier()
    model.load_state_dict(load_file(str(WEIGHTS_DIR / "shape_classifier.safetensors")))
    return model.eval()


@cache
def load_identity_network() -> IdentityNet:
    model = IdentityNet()
    model.load_state_dict(load_file(str(WEIGHTS_DIR / "identity.safetensors")))
    return model.eval()
