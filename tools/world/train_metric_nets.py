"""Train the world's two metric networks (core/world/metric_nets.py) into core/world/weights/:

    python tools/world/train_metric_nets.py [--only shape|identity] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from conceptkit.core.world.metric_nets import (
    IDENTITY_TRAIN_SEEDS,
    WEIGHTS_DIR,
    IdentityNet,
    crop_mask,
    shape_classifier,
)
from conceptkit.core.world.render import creature_traits, shape_mask
from conceptkit.core.world.scenes import Scene, WorldObject
from conceptkit.core.world.vocabulary import COLOURS, PATTERNS, POSITIONS, SHAPES

log = logging.getLogger("conceptkit.world.metrics")


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


def trait_groups(seeds: range) -> list[list[int]]:
    """Creatures of `seeds` grouped by their sayable traits (same words, other detail): hard negatives."""
    groups: dict = {}
    for seed in seeds:
        groups.setdefault(creature_traits(seed), []).append(seed)
    return [g for g in groups.values() if len(g) >= 4]


def round_trips(views: np.ndarray, vae, rng: np.random.Generator, share: float = 0.5) -> np.ndarray:
    """`views` [N, 3, 64, 64] in 0..1 with a random `share` of them through `vae` (encode, decode): what a latent
    model can draw of them."""
    if vae is None:
        return views
    chosen = np.nonzero(rng.random(len(views)) < share)[0]
    if len(chosen):
        with torch.no_grad():
            x = torch.from_numpy(views[chosen]) * 2 - 1
            views[chosen] = ((vae.decode(vae.encode(x).latent_dist.mean).sample + 1) / 2).clamp(0, 1).numpy()
    return views


def train_identity_network(steps: int = 3000, pairs: int = 32, seed: int = 0, vae=None,
                           twins: int = 4) -> IdentityNet:
    """Contrastive: two views of each of `pairs` creatures; half the creatures come in groups of `twins` that
    share every sayable trait, so the network tells creatures apart by detail too; with `vae`, half the views
    are VAE round trips."""
    rng, model = np.random.default_rng(seed), IdentityNet()
    torch.manual_seed(seed)
    groups = trait_groups(IDENTITY_TRAIN_SEEDS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for step in range(steps):
        alike = [int(s) for g in rng.choice(len(groups), pairs // 2 // twins, replace=False)
                 for s in rng.choice(groups[g], twins, replace=False)]
        seeds = alike + [int(s) for s in rng.choice(IDENTITY_TRAIN_SEEDS, size=pairs - len(alike), replace=False)]
        views = round_trips(np.stack([creature_view(rng, s) for s in seeds for _ in range(2)]), vae, rng)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--only", choices=["shape", "identity"], default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--vae", type=Path, default=None, help="a VAE folder: half the identity views go through it")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "shape"):
        save_file(train_shape_classifier().state_dict(), str(args.out / "shape_classifier.safetensors"))
    if args.only in (None, "identity"):
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.vae).eval() if args.vae else None
        save_file(train_identity_network(vae=vae).state_dict(), str(args.out / "identity.safetensors"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
