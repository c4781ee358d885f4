"""The world's creature domain for the encoder's pre-training: creatures from the reserved seed range
(ENCODER_DOMAIN_SEEDS: no other suite, subject or network uses them). Each sample is one creature twice: a
condition render (what the encoder sees) and a target render in another scene with its caption (where the
loss is taken), so the encoder learns the creature, not the scene.

WIP (issue 14): not wired into a training run yet.
"""

from __future__ import annotations

import numpy as np
import torch

from ...training import Batch
from ...world.scenes import Scene, WorldObject
from ...world.vocabulary import COLOURS, ENCODER_DOMAIN_SEEDS, INSTANCE_CLASS_WORD, PATTERNS, POSITIONS

PLACEHOLDER = "{trigger}"


def _random_scene(rng: np.random.Generator, creature: int, token: str | None) -> Scene:
    colours, positions = list(COLOURS), list(POSITIONS)
    return Scene(colours[int(rng.integers(len(colours)))], PATTERNS[int(rng.integers(len(PATTERNS)))],
                 (WorldObject(positions[int(rng.integers(len(positions)))], instance=creature, token=token),))


def domain_batch(step: int, batch_size: int, generator: torch.Generator) -> Batch:
    """A pure function of the step's generator: targets [B, 3, 64, 64] in -1..1 with captions naming the
    placeholder ("a {trigger} creature on the left, red background"), conditions in `extra["condition"]`."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    creatures = rng.integers(ENCODER_DOMAIN_SEEDS.start, ENCODER_DOMAIN_SEEDS.stop, size=batch_size)
    conditions, targets, captions = [], [], []
    for creature in creatures:
        conditions.append(_random_scene(rng, int(creature), None).render(rng))
        target = _random_scene(rng, int(creature), PLACEHOLDER)
        targets.append(target.render(rng))
        captions.append(target.caption())

    def pixels(images):
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1

    return Batch(pixels(targets), captions, extra={"condition": pixels(conditions),
                                                   "class_word": INSTANCE_CLASS_WORD})
