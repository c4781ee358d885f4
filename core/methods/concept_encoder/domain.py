"""The world's creature domain for the encoder's pre-training: creatures from the reserved seed range
(ENCODER_DOMAIN_SEEDS: no other suite, subject or network uses them). Each sample is one creature twice: a
condition render (what the encoder sees) and a target render in another scene with its caption (where the
loss is taken), so the encoder learns the creature, not the scene.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import InputError
from ...files import guarded
from ...training import Batch, Stream, prepare_images
from ...training.images import IMAGE_SUFFIXES, augment, load_image_file
from ...world.scenes import Scene, WorldObject
from ...world.vocabulary import COLOURS, ENCODER_DOMAIN_SEEDS, PATTERNS, POSITIONS


def _random_scene(rng: np.random.Generator, creature: int, token: str | None) -> Scene:
    colours, positions = list(COLOURS), list(POSITIONS)
    return Scene(colours[int(rng.integers(len(colours)))], PATTERNS[int(rng.integers(len(PATTERNS)))],
                 (WorldObject(positions[int(rng.integers(len(positions)))], instance=creature, token=token),))


def world_domain(trigger: str):
    """The world's creature domain as a stream's `make(step, batch_size, generator)`: a pure function of the
    step's generator. Targets [B, 3, 64, 64] in -1..1 with captions naming `trigger` ("<t> on the left,
    red background"); each one's condition image (another render of the same creature) in `extra["condition"]`."""

    def make(step: int, batch_size: int, generator: torch.Generator) -> Batch:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        creatures = rng.integers(ENCODER_DOMAIN_SEEDS.start, ENCODER_DOMAIN_SEEDS.stop, size=batch_size)
        conditions, targets, captions = [], [], []
        for creature in creatures:
            conditions.append(_random_scene(rng, int(creature), None).render(rng))
            target = _random_scene(rng, int(creature), trigger)
            targets.append(target.render(rng))
            captions.append(target.caption())
        return Batch(_pixels(targets), captions, extra={"condition": _pixels(conditions)})

    return make


def _pixels(images) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def folder_domain(folder: Path, resolution: int, trigger: str) -> Stream:
    """A domain from a folder of images of one class (real models), as `image_domain`."""
    if not Path(folder).exists():
        raise InputError(f"{folder}: no such folder; give the folder of the domain's images.")
    if not Path(folder).is_dir():
        raise InputError(f"{folder} is a file; give the folder of the domain's images.")
    with guarded(Path(folder), "list the image folder"):
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise InputError(f"{folder} holds {len(files)} images ({', '.join(IMAGE_SUFFIXES)}); a domain needs many "
                         "images of one class (hundreds or more).")
    return image_domain([load_image_file(p)[0][0] for p in files], resolution, trigger)  # any damaged file: named


def image_domain(images, resolution: int, trigger: str) -> Stream:
    """A domain from images of one class (any form prepare_images takes): each sample is one image, augmented
    twice, the encoder reading one view and the loss taken on the other, captioned "a photo of <t>" (the
    trigger starts at the class word's vector and takes the class word's place)."""
    pixels = prepare_images(images, resolution)
    if len(pixels) < 2:
        raise InputError(f"{len(pixels)} image was given; a domain needs many images of one class (hundreds or "
                         "more).")
    caption = f"a photo of {trigger}"

    def make(step: int, batch_size: int, generator: torch.Generator) -> Batch:
        pick = torch.randint(0, len(pixels), (batch_size,), generator=generator)
        targets = augment(pixels[pick], generator, 0.8, flip=True)
        conditions = augment(pixels[pick], generator, 0.8, flip=True)
        return Batch(targets, [caption] * batch_size, extra={"condition": conditions})

    return Stream(make)
