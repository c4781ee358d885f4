"""Identity vectors: every creature's own point in the text encoder's input space (its "true name").

A creature's vector is the whitened principal components of its sprite, seen at the latent's resolution
(16x16 on grey), scaled to a fraction of a typical caption word's norm. `whitening` (1: full, the shipped
stages) divides each component by its spread to that power: below 1 the components that vary most across
creatures (body colour, shape) keep more of the norm than fine detail. A named creature's word is tied to its
vector, and training scenes of unnamed creatures are captioned with a carrier word whose input embedding is
replaced by the creature's vector, so the text encoder learns one continuous map from that space to what is
drawn: a nearby point is a similar creature, any direction changes it (as textual inversion needs).
"""

from __future__ import annotations

import numpy as np
import torch

from conceptkit.core.world.render import instance_sprite
from conceptkit.core.world.vocabulary import TRAIN_INSTANCE_SEEDS

DIMENSIONS = 128
BASIS_CREATURES = 4096
GREY = 128.0


def sprite_features(seeds) -> np.ndarray:
    """[n, 768]: each creature's sprite on grey, averaged down to 16x16, in 0..1."""
    rows = []
    for seed in seeds:
        mask, rgb = instance_sprite(int(seed))
        image = np.where(mask[..., None], rgb, GREY)
        n = image.shape[0] // 16
        rows.append(image.reshape(16, n, 16, n, 3).mean(axis=(1, 3)).reshape(-1) / 255.0)
    return np.stack(rows).astype(np.float64)


class IdentityBasis:
    """Whitened PCA of the training pool's sprites (a fixed sample of it): a pure function of the world."""

    def __init__(self, creatures: int = BASIS_CREATURES, dimensions: int = DIMENSIONS, whitening: float = 1.0):
        seeds = np.random.default_rng(77).choice(np.arange(TRAIN_INSTANCE_SEEDS.start, TRAIN_INSTANCE_SEEDS.stop),
                                                 creatures, replace=False)
        x = sprite_features(seeds)
        self.mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        self.components = vt[:dimensions]
        self.scales = s[:dimensions] / np.sqrt(creatures - 1)
        self.whitening = whitening
        self._expected_norm = float(np.sqrt((self.scales ** (2 - 2 * whitening)).sum()))

    def vectors(self, seeds, norm: float) -> torch.Tensor:
        """[n, DIMENSIONS] float32: coordinates divided by the spreads to the power `whitening`, scaled so their
        expected norm is `norm`."""
        z = (sprite_features(seeds) - self.mean) @ self.components.T / self.scales ** self.whitening
        return torch.from_numpy(z * norm / self._expected_norm).float()
