"""Personal subjects of the world: held-out creatures, their few training renders and the prompts they are
evaluated on. The same fixed protocol serves the example workflows, the tests and `conceptkit bench`."""

from __future__ import annotations

import numpy as np

from .checkers import foreground
from .render import background, paste
from .scenes import Scene, WorldObject, background_colours
from .vocabulary import HELDOUT_INSTANCE_SEEDS, PAIRED_POSITIONS, PATTERNS, POSITIONS

TRIGGER_SLOT = "{trigger}"


def subject_seed(index: int) -> int:
    if not 0 <= index < len(HELDOUT_INSTANCE_SEEDS):
        raise ValueError(f"subject {index} does not exist; the world has {len(HELDOUT_INSTANCE_SEEDS)} (0-"
                         f"{len(HELDOUT_INSTANCE_SEEDS) - 1}).")
    return HELDOUT_INSTANCE_SEEDS[index]


def _personal(token: str | None) -> str | None:
    """How a caption names a personal subject: "a <identifier>" ("a <s0>", "a <s0> creature"), as it says
    "a creature" where no word names it."""
    return f"a {token}" if token else None


def _scenes(index: int, count: int, seed: int, token: str | None) -> list[Scene]:
    rng = np.random.default_rng([seed, index, 17])
    colours, positions = background_colours(subject_seed(index)), list(POSITIONS)
    return [Scene(colours[int(rng.integers(len(colours)))], PATTERNS[int(rng.integers(2))],
                  (WorldObject(positions[int(rng.integers(len(positions)))], instance=subject_seed(index),
                               token=_personal(token)),)) for _ in range(count)]


def training_renders(index: int, count: int = 4, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """`count` renders of subject `index` on varied backgrounds and places (uint8 [N, 64, 64, 3]) and their
    captions with the identifier's slot: "a {trigger} on the left, blue background"."""
    scenes = _scenes(index, count, seed, TRIGGER_SLOT)
    rng = np.random.default_rng([seed, index, 18])
    return np.stack([s.render(rng) for s in scenes]), [s.caption() for s in scenes]


def reference_renders(index: int, count: int = 8) -> np.ndarray:
    """Fresh renders of the subject (other backgrounds and places than its training renders)."""
    scenes = _scenes(index, count, 10_000, None)
    rng = np.random.default_rng([index, 19])
    return np.stack([s.render(rng) for s in scenes])


def evaluation_scenes(index: int, token: str, count: int = 8) -> list[Scene]:
    """Scenes whose captions put the subject (by its identifier, `training.identifier`) in new places and on new
    backgrounds."""
    return _scenes(index, count, 20_000, token)


def pair_scenes(first: tuple[int, str], second: tuple[int, str], count: int = 8, seed: int = 30_000,
                named: bool = False) -> list[Scene]:
    """Scenes with two subjects ((index, token) each) at a pair of places, their captions naming both by token.
    Either subject may take the left (or top) place; a caption names that place first ("a <s1> creature on the
    left and a <s0> creature on the right"), as every two-object caption the world was trained on does: the
    reversed order is one the world never saw, and it draws the first-named creature on the left.
    `named`: tokens that stand for the creature as a name does ("<s0> on the left"), without "a"."""
    rng = np.random.default_rng([seed, first[0], second[0]])
    colours = [c for c in background_colours(subject_seed(first[0]))
               if c in background_colours(subject_seed(second[0]))]
    scenes = []
    for _ in range(count):
        places = PAIRED_POSITIONS[int(rng.integers(len(PAIRED_POSITIONS)))]
        subjects = (first, second) if rng.random() < 0.5 else (second, first)
        objects = tuple(WorldObject(place, instance=subject_seed(index), token=token if named else _personal(token))
                        for place, (index, token) in zip(places, subjects, strict=True))
        scenes.append(Scene(colours[int(rng.integers(len(colours)))], PATTERNS[int(rng.integers(2))], objects))
    return scenes


def cut_mix_renders(renders: dict[int, np.ndarray], count: int, seed: int = 0) -> tuple[np.ndarray, list[Scene]]:
    """Cut-Mix composites (SVDiff) of two subjects from the images given of them only (`renders`: subject index ->
    uint8 [N, 64, 64, 3], the first subject first): each subject cut out of one of its images (the foreground
    reader's mask, as a user cuts a subject out of a photo) and pasted at one of a pair of places on a plain
    background both subjects' renders allow, either subject taking the left (or top) place, the places
    alternating. uint8 [count, 64, 64, 3] and the scenes they show, whose captions
    name the left or top subject first, as the world's pair captions do, with a slot for each subject's
    identifier ("a {first} on the left and a {second} on the right, green background")."""
    first, second = renders
    colours = [c for c in background_colours(subject_seed(first)) if c in background_colours(subject_seed(second))]
    rng = np.random.default_rng([seed, first, second, 44])
    images, scenes = [], []
    for k in range(count):
        places = PAIRED_POSITIONS[k % len(PAIRED_POSITIONS)]
        subjects = ((first, "first"), (second, "second")) if k // len(PAIRED_POSITIONS) % 2 == 0 else (
            (second, "second"), (first, "first"))
        colour = colours[int(rng.integers(len(colours)))]
        canvas = background(colour, "plain")
        for place, (index, _) in zip(places, subjects, strict=True):
            _paste(canvas, renders[index][int(rng.integers(len(renders[index])))], POSITIONS[place])
        objects = tuple(WorldObject(place, instance=subject_seed(index), token=_personal(f"{{{slot}}}"))
                        for place, (index, slot) in zip(places, subjects, strict=True))
        images.append(canvas.round().astype(np.uint8))
        scenes.append(Scene(colour, "plain", objects))
    return np.stack(images), scenes


def _paste(canvas: np.ndarray, render: np.ndarray, centre: tuple[int, int]) -> None:
    """The render's foreground painted onto `canvas` with its bounding box centred at `centre` (x, y)."""
    mask = foreground(render)
    ys, xs = np.nonzero(mask)
    box = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
    paste(canvas, mask[box], render[box].astype(np.float32), centre)
