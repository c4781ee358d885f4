"""Scenes of the world: what is in an image, its caption, and how scenes are drawn for each split."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .render import background, creature_traits, instance_sprite, paste, shape_mask
from .vocabulary import (
    COLOURS,
    CREATURE_NAMES,
    HELDOUT_DOMAINS,
    HELDOUT_PAIRS,
    HELDOUT_PLACES,
    HELDOUT_STYLE,
    LAYOUT_DOMAINS,
    NAMED_CREATURE_SEEDS,
    PAIRED_POSITIONS,
    PATTERN_WORDS,
    PATTERNS,
    POSITION_PHRASES,
    POSITIONS,
    SHAPES,
    SIZES,
    TRAIN_INSTANCE_SEEDS,
    UNSAID,
    UNSAID_RANGE,
)

JITTER = 2  # pixels an object may move off its anchor
TWO_SHAPE_FRACTION = 0.3  # of the shape scenes


@dataclass(frozen=True)
class SceneMix:
    """Fractions of the training scenes with creatures (the rest are shape scenes: one or two shapes), and how
    their creatures are captioned: `named` of them are named creatures (captioned by name); of the others,
    `described[0]` are captioned with all their traits, `described[1]` with some, the rest as "a creature".
    `unsaid` of the one-object scenes put their object anywhere (UNSAID_RANGE) and do not say where, as many
    real captions do not: the model knows an object can stand at places no word names."""
    one_creature: float
    two_creatures: float = 0.0
    creature_with_shape: float = 0.0
    named: float = 0.0
    described: tuple[float, float] = (0.0, 0.0)
    unsaid: float = 0.0


FIRST_EDITION = SceneMix(one_creature=0.2)
SECOND_EDITION = SceneMix(one_creature=0.15, two_creatures=0.15, creature_with_shape=0.15)
THIRD_EDITION = SceneMix(one_creature=0.4, two_creatures=0.17, creature_with_shape=0.08, named=0.55,
                         described=(0.6, 0.2))
THIRD_EDITION_UNSAID = replace(THIRD_EDITION, unsaid=0.2)
MIXES = {"first_edition": FIRST_EDITION, "second_edition": SECOND_EDITION, "third_edition": THIRD_EDITION,
         "third_edition_unsaid": THIRD_EDITION_UNSAID}
TRAITS = ("body", "colour", "marking")


@dataclass(frozen=True)
class WorldObject:
    position: str
    shape: str | None = None  # a shape object ...
    colour: str | None = None
    size: str = "large"
    instance: int | None = None  # ... or a creature, by its seed
    token: str | None = None  # the word naming that creature, if any: a named creature's name, a personal token
    said: tuple[str, ...] = ()  # which of its TRAITS the caption says, when no word names it
    anchor: tuple[int, int] | None = None  # its centre (x, y) when its place is UNSAID

    def phrase(self) -> str:
        # an unsaid place is left out; a held-out place says its own name
        where = "" if self.position == UNSAID else " " + POSITION_PHRASES.get(self.position, self.position)
        if self.instance is not None:
            if self.token:
                return f"{self.token}{where}"  # a name stands for the creature, as "Tavi on the left"
            return f"{creature_traits(self.instance).words(self.said)}{where}"
        return f"a {self.size} {self.colour} {self.shape}{where}"

    def centre(self) -> tuple[int, int]:
        if self.anchor is not None:
            return self.anchor
        return POSITIONS[self.position] if self.position in POSITIONS else HELDOUT_PLACES[self.position]


@dataclass(frozen=True)
class Scene:
    background: str
    pattern: str
    objects: tuple[WorldObject, ...]

    def caption(self) -> str:
        backdrop = " ".join(w for w in (self.background, PATTERN_WORDS.get(self.pattern, self.pattern)) if w)
        return " and ".join(o.phrase() for o in self.objects) + f", {backdrop} background"

    def render(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """uint8 [64, 64, 3]. With `rng`, objects move up to 2 px and the pattern phase varies."""
        rng = rng or np.random.default_rng(0)
        phase = tuple(int(v) for v in rng.integers(0, 8, size=2)) if rng is not None else (0, 0)
        image = background(self.background, self.pattern, phase)
        for obj in self.objects:
            cx, cy = obj.centre()
            cx, cy = cx + int(rng.integers(-JITTER, JITTER + 1)), cy + int(rng.integers(-JITTER, JITTER + 1))
            if obj.instance is not None:
                mask, rgb = instance_sprite(obj.instance)
                paste(image, mask, rgb, (cx, cy))
            else:
                paste(image, shape_mask(obj.shape, SIZES[obj.size]), COLOURS[obj.colour], (cx, cy))
        return image.round().astype(np.uint8)


def _pick(rng: np.random.Generator, options):
    options = list(options)
    return options[int(rng.integers(len(options)))]


def random_shape_object(rng, position: str, background: str, heldout: bool, size: str | None = None) -> WorldObject:
    while True:
        colour, shape = _pick(rng, [c for c in COLOURS if c != background]), _pick(rng, SHAPES)
        if ((colour, shape) in HELDOUT_PAIRS) == heldout:
            return WorldObject(position, shape, colour, size or _pick(rng, SIZES))


def background_colours(instance: int) -> list[str]:
    """The background colours a creature can stand on: every colour but its body's."""
    return [c for c in COLOURS if c != creature_traits(instance).colour]


def _train_creature(rng: np.random.Generator, background_colour: str, mix: SceneMix, position: str | None = None,
                    other: int | None = None) -> WorldObject:
    """A creature of the training pools (a named one, or an unnamed one captioned by `mix.described`) whose body
    is not the background's colour (nor `other`, the scene's other creature), at `position` (None: a random
    one, drawn after the creature)."""
    named = rng.random() < mix.named
    while True:
        if named:
            index = int(rng.integers(len(CREATURE_NAMES)))
            seed, token = NAMED_CREATURE_SEEDS[index], CREATURE_NAMES[index]
        else:
            seed, token = int(rng.integers(TRAIN_INSTANCE_SEEDS.start, TRAIN_INSTANCE_SEEDS.stop)), None
        if seed != other and creature_traits(seed).colour != background_colour:
            break
    said: tuple[str, ...] = ()
    if not named:
        draw = rng.random()
        if draw < mix.described[0]:
            said = TRAITS
        elif draw < sum(mix.described):
            said = tuple(t for t in TRAITS if rng.random() < 0.5) or (TRAITS[int(rng.integers(len(TRAITS)))],)
    return WorldObject(position or _pick(rng, POSITIONS), instance=seed, token=token, said=said)


def _pair_scene(rng: np.random.Generator, background_colour: str, pattern: str, with_shape: bool,
                mix: SceneMix) -> Scene:
    """Two creatures, or a creature and a shape (either place), at a pair of places."""
    places = _pick(rng, PAIRED_POSITIONS)
    if not with_shape:
        first = _train_creature(rng, background_colour, mix, places[0])
        second = _train_creature(rng, background_colour, mix, places[1], other=first.instance)
        return Scene(background_colour, pattern, (first, second))
    creature_first = rng.random() < 0.5
    creature_place, shape_place = places if creature_first else places[::-1]
    creature = _train_creature(rng, background_colour, mix, creature_place)
    shape = random_shape_object(rng, shape_place, background_colour, heldout=False)
    return Scene(background_colour, pattern, (creature, shape) if creature_first else (shape, creature))


def random_scene(rng: np.random.Generator, split: str = "train", mix: SceneMix = THIRD_EDITION) -> Scene:
    """A scene of `split`: "train" (what the base model sees: shapes and creatures, in `mix`), "seen" (shape
    scenes of the training distribution, for evaluation), "heldout" (one object of a colour-shape pair never
    shown in training), "pairs" (two creatures, or a creature and a shape)."""
    bg, pattern = _pick(rng, COLOURS), _pick(rng, PATTERNS)
    if split == "pairs":
        return _pair_scene(rng, bg, pattern, with_shape=rng.random() < 0.5, mix=mix)
    if split == "train":
        draw = rng.random()
        if draw < mix.one_creature:
            return Scene(bg, pattern, (_maybe_unsaid(rng, _train_creature(rng, bg, mix), mix),))
        if draw < mix.one_creature + mix.two_creatures:
            return _pair_scene(rng, bg, pattern, with_shape=False, mix=mix)
        if draw < mix.one_creature + mix.two_creatures + mix.creature_with_shape:
            return _pair_scene(rng, bg, pattern, with_shape=True, mix=mix)
    if split == "heldout":
        return Scene(bg, pattern, (random_shape_object(rng, _pick(rng, POSITIONS), bg, heldout=True),))
    if rng.random() < TWO_SHAPE_FRACTION:
        first, second = _pick(rng, PAIRED_POSITIONS)
        sizes = _pick(rng, [("small", "small"), ("small", "large"), ("large", "small")])
        objects = tuple(random_shape_object(rng, p, bg, heldout=False, size=s)
                        for p, s in zip((first, second), sizes, strict=True))
        return Scene(bg, pattern, objects)
    shape = random_shape_object(rng, _pick(rng, POSITIONS), bg, heldout=False)
    return Scene(bg, pattern, (_maybe_unsaid(rng, shape, mix) if split == "train" else shape,))


def _maybe_unsaid(rng: np.random.Generator, obj: WorldObject, mix: SceneMix) -> WorldObject:
    """`obj` anywhere, its place unsaid, in `mix.unsaid` of draws (no draw at all for a mix without them, so
    the earlier mixes' scenes stay as they were)."""
    if not mix.unsaid or rng.random() >= mix.unsaid:
        return obj
    anchor = tuple(int(v) for v in rng.integers(UNSAID_RANGE[0], UNSAID_RANGE[1] + 1, size=2))
    return replace(obj, position=UNSAID, anchor=anchor)


def evaluation_scenes(split: str, count: int, seed: int = 1234) -> list[Scene]:
    """A fixed list of evaluation scenes ("seen", "heldout" or "pairs")."""
    rng = np.random.default_rng([seed, {"seen": 0, "heldout": 1, "pairs": 2}[split]])
    return [random_scene(rng, split) for _ in range(count)]


STYLE_STREAMS = {"targets": 3, "reference": 4}


def _fits(scene: Scene, domain: str) -> bool:
    """A snowline domain's scenes keep white for the snow: no white background, shape or creature body; a
    layout domain's hold one object."""
    if domain in LAYOUT_DOMAINS:
        return len(scene.objects) == 1
    if domain != "snowline":
        return True
    colours = [o.colour if o.instance is None else creature_traits(o.instance).colour for o in scene.objects]
    return scene.background != "white" and "white" not in colours


def style_scenes(count: int, seed: int = 0, stream: str = "targets", domain: str = HELDOUT_STYLE) -> list[Scene]:
    """Scenes of an unseen domain (HELDOUT_DOMAINS): what the base model was trained on (creatures and shapes)
    on the domain's background, or (a layout domain) with its one object at the domain's place. "targets": the
    few images a user gives; "reference": other scenes of the domain, to measure generated images against."""
    rng = np.random.default_rng([seed, STYLE_STREAMS[stream]] + ([] if domain == HELDOUT_STYLE else
                                                                  [HELDOUT_DOMAINS.index(domain)]))
    scenes = []
    while len(scenes) < count:
        scene = random_scene(rng, "train")
        if domain in LAYOUT_DOMAINS:
            scene = replace(scene, objects=tuple(replace(o, position=domain) for o in scene.objects))
        else:
            scene = replace(scene, pattern=domain)
        if _fits(scene, domain):
            scenes.append(scene)
    return scenes


def style_renders(count: int, seed: int = 0, stream: str = "targets", domain: str = HELDOUT_STYLE) -> np.ndarray:
    """uint8 [count, 64, 64, 3] renders of `style_scenes` (pattern phases and places vary)."""
    rng = np.random.default_rng([seed, STYLE_STREAMS[stream], 1])
    return np.stack([scene.render(rng) for scene in style_scenes(count, seed, stream, domain)])


def training_batch(seed: int, step: int, batch_size: int, mix: SceneMix = THIRD_EDITION
                   ) -> tuple[np.ndarray, list[str]]:
    """The batch of one training step, a pure function of (seed, step): resuming replays it exactly."""
    rng = np.random.default_rng([seed, step])
    scenes = [random_scene(rng, "train", mix) for _ in range(batch_size)]
    return np.stack([s.render(rng) for s in scenes]), [s.caption() for s in scenes]
