"""The two small networks behind the world metrics, trained on renders by this module and shipped.

- Shape classifier: a binary object mask (cropped to its box, 24x24) -> one of SHAPES.
- Identity network: a 64x64 image with one creature -> a unit embedding; two images of the same
  creature (any background, position, noise) land close, two creatures far apart.

    python -m conceptkit.core.world.metric_nets   # retrain both into core/world/weights/
"""

from __future__ import annotations

import argparse
import logging
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .render import shape_mask
from .scenes import Scene, WorldObject
from .vocabulary import COLOURS, PATTERNS, POSITIONS, SHAPES

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


def _distorted_mask(rng: np.random.Generator, shape: str) -> np.ndarray:
    """A rendered shape mask with the defects of generated images: blur, ragged edges, specks."""
    size = int(rng.integers(14, 38))
    mask = shape_mask(shape, size).astype(np.float32)
    canvas = np.zeros((size + 8, size + 8), np.float32)
    canvas[4:4 + size, 4:4 + size] = mask
    t = torch.from_numpy(canvas)[None, None]
    if rng.random() < 0.7:
        t = F.avg_pool2d(t, 3, stride=1, padding=1)
    t = t + torch.from_numpy(rng.normal(0, rng.uniform(0, 0.25), t.shape).astype(np.float32))
    scale = rng.uniform(0.85, 1.15, size=2)
    t = F.interpolate(t, scale_factor=tuple(scale), mode="bilinear")
    return (t[0, 0].numpy() > rng.uniform(0.35, 0.65))


def train_shape_classifier(steps: int = 1500, seed: int = 0) -> nn.Module:
    rng, model = np.random.default_rng(seed), shape_classifier()
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(steps):
        labels = rng.integers(len(SHAPES), size=64)
        masks = np.stack([crop_mask(_distorted_mask(rng, SHAPES[i])) for i in labels])
        loss = F.cross_entropy(model(torch.from_numpy(masks)[:, None]), torch.from_numpy(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 250 == 0:
            log.info("shape classifier step %d loss %.4f", step, loss.item())
    return model.eval()


def creature_view(rng: np.random.Generator, seed: int) -> np.ndarray:
    """One augmented render of creature `seed`: random background, pattern, position, noise, blur."""
    scene = Scene(str(rng.choice(list(COLOURS))), str(rng.choice(PATTERNS)),
                  (WorldObject(str(rng.choice(list(POSITIONS))), instance=seed),))
    image = scene.render(rng).astype(np.float32) / 255
    t = torch.from_numpy(image).permute(2, 0, 1)[None]
    if rng.random() < 0.5:
        t = F.avg_pool2d(t, 3, stride=1, padding=1)
    t = t * torch.from_numpy(rng.uniform(0.85, 1.15, (1, 3, 1, 1)).astype(np.float32))
    t = t + torch.from_numpy(rng.normal(0, rng.uniform(0, 0.06), t.shape).astype(np.float32))
    return t[0].clamp(0, 1).numpy()


def train_identity_network(steps: int = 2000, pairs: int = 32, seed: int = 0) -> IdentityNet:
    rng, model = np.random.default_rng(seed), IdentityNet()
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for step in range(steps):
        seeds = rng.choice(IDENTITY_TRAIN_SEEDS, size=pairs, replace=False)
        views = np.stack([creature_view(rng, int(s)) for s in seeds for _ in range(2)])
        z = model(torch.from_numpy(views)).view(pairs, 2, -1)
        logits = z[:, 0] @ z[:, 1].T / 0.1
        target = torch.arange(pairs)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 250 == 0:
            log.info("identity step %d loss %.4f", step, loss.item())
    return model.eval()


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="train the world's metric networks")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--only", choices=["shape", "identity"], default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "shape"):
        save_file(train_shape_classifier().state_dict(), str(args.out / "shape_classifier.safetensors"))
    if args.only in (None, "identity"):
        save_file(train_identity_network().state_dict(), str(args.out / "identity.safetensors"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
