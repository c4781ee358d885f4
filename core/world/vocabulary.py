"""The world's closed vocabulary: colours, shapes, sizes, positions, background patterns, and the
held-out splits. Everything here is fixed: the shipped model and every metric depend on it."""

from __future__ import annotations

IMAGE_SIZE = 64

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "white": (240, 240, 240),
}
PATTERN_SHADE = 0.6  # pattern marks are the background colour darkened by this factor

SHAPES = ("circle", "square", "triangle", "star", "cross", "heart")
SIZES: dict[str, int] = {"small": 20, "large": 32}  # bounding-box side in pixels
POSITIONS: dict[str, tuple[int, int]] = {  # object centre (x, y)
    "left": (17, 32),
    "right": (47, 32),
    "top": (32, 17),
    "bottom": (32, 47),
    "centre": (32, 32),
}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
PAIRED_POSITIONS = (("left", "right"), ("top", "bottom"))  # where two objects go
UNSAID = "unsaid"  # an object's place when the caption does not say it: anywhere in UNSAID_RANGE (its anchor)
UNSAID_RANGE = (10, 54)  # centres (each axis, pixels) an unsaid place is drawn from, corners included
PATTERNS = ("plain", "striped", "checked", "dotted")
PATTERN_WORDS = {"plain": "", "striped": "striped", "checked": "checked", "dotted": "dotted"}

# Colour-shape pairs never shown in training: one per colour and one per shape.
HELDOUT_PAIRS = frozenset({
    ("red", "star"), ("green", "heart"), ("blue", "triangle"),
    ("yellow", "cross"), ("purple", "circle"), ("white", "square"),
})

# Creatures are the instance domain. Each is drawn from its seed: attributes that words say (body colour, body
# shape, marking kind and colour: "a round green creature with orange spots") and detail they cannot (exact
# hues, marking placement, proportions, eyes). The base model learns the words from an unnamed training pool and
# NAMED_CREATURES, a pool of creatures that are each a word of the vocabulary ("tavi on the left"), as a real
# model knows named things; held-out creatures are never named in training and are the personal subjects.
INSTANCE_CLASS_WORD = "creature"
INSTANCE_SIZE = 32
CREATURE_COLOURS: dict[str, tuple[int, int, int]] = {**COLOURS, "orange": (245, 140, 30), "pink": (245, 135, 190)}
BODY_SHAPES = ("round", "tall", "wide", "boxy")
MARKINGS = ("spots", "stripes")  # or none: a plain body, about which captions say nothing
TRAIN_INSTANCE_SEEDS = range(0, 100_000)
HELDOUT_INSTANCE_SEEDS = range(1_000_000, 1_000_100)
ENCODER_DOMAIN_SEEDS = range(4_000_000, 4_100_000)  # the Concept Encoder's domain: creatures no one else uses
NAMED_CREATURE_COUNT = 512
NAMED_CREATURE_SEEDS = range(5_000_000, 5_000_000 + NAMED_CREATURE_COUNT)

# Unseen domains, as few-shot targets (never in training captions or images). Background domains: "zigzag"
# (second edition), a fine texture the prior settles below the SGE guidance window; "big_checks" (16 px checks)
# and "snowline" (the bottom third of the background white). Layout domains: the scene's one object in a corner,
# a place no caption names (HELDOUT_PLACES): "top_left", "bottom_right".
HELDOUT_STYLE = "zigzag"
HELDOUT_DOMAINS = ("zigzag", "big_checks", "snowline", "top_left", "bottom_right")
HELDOUT_PLACES: dict[str, tuple[int, int]] = {"top_left": (13, 13), "bottom_right": (51, 51)}  # centres (x, y)
LAYOUT_DOMAINS = tuple(HELDOUT_PLACES)
FAIR_DOMAINS = LAYOUT_DOMAINS  # those the shipped model passes `conceptkit world check`'s fairness gates on
SNOWLINE_ROW = 43  # the first white row of a snowline background


def _creature_names(count: int, taken: set[str]) -> tuple[str, ...]:
    """`count` short made-up names (consonant-vowel syllables: "tavi", "moro"), a fixed list, none in `taken`."""
    import numpy as np

    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    syllables = [c + v for c in consonants for v in vowels]
    rng, names = np.random.default_rng(2026), []
    while len(names) < count:
        name = "".join(syllables[i] for i in rng.integers(len(syllables), size=int(rng.integers(2, 4))))
        if name not in names and name not in taken:
            names.append(name)
    return tuple(names)


# Word lists in the order each edition first used them: a tokenizer built from them gives every earlier word the
# id it had (the merges of later words rank lower), so a continued model keeps its embeddings.
SECOND_EDITION_WORDS = sorted(
    {"a", "and", "on", "the", "at", "in", "background", INSTANCE_CLASS_WORD, "plain"}
    | set(COLOURS) | set(SHAPES) | set(SIZES) | set(POSITIONS) | {w for w in PATTERN_WORDS.values() if w}
)
_THIRD_EDITION_TRAITS = sorted(({"with"} | set(CREATURE_COLOURS) | set(BODY_SHAPES) | set(MARKINGS))
                               - set(SECOND_EDITION_WORDS))
# Name i is the creature of NAMED_CREATURE_SEEDS[i].
CREATURE_NAMES = _creature_names(NAMED_CREATURE_COUNT, {*SECOND_EDITION_WORDS, *_THIRD_EDITION_TRAITS})
THIRD_EDITION_WORDS = [*_THIRD_EDITION_TRAITS, *CREATURE_NAMES]
CAPTION_WORDS = SECOND_EDITION_WORDS + THIRD_EDITION_WORDS
