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
PATTERNS = ("plain", "striped", "checked", "dotted")
PATTERN_WORDS = {"plain": "", "striped": "striped", "checked": "checked", "dotted": "dotted"}

# Colour-shape pairs never shown in training: one per colour and one per shape.
HELDOUT_PAIRS = frozenset({
    ("red", "star"), ("green", "heart"), ("blue", "triangle"),
    ("yellow", "cross"), ("purple", "circle"), ("white", "square"),
})

# Unique sprites ("creatures") are the instance domain: the base model learns the class word from
# a training pool; held-out ones are personal subjects ("a <c1> creature ...").
INSTANCE_CLASS_WORD = "creature"
INSTANCE_SIZE = 32
TRAIN_INSTANCE_SEEDS = range(0, 100_000)
HELDOUT_INSTANCE_SEEDS = range(1_000_000, 1_000_100)
ENCODER_DOMAIN_SEEDS = range(4_000_000, 4_100_000)  # the Concept Encoder's domain: creatures no one else uses

# An unseen background style, as a few-shot target domain (never in training captions or images).
HELDOUT_STYLE = "zigzag"

CAPTION_WORDS = sorted(
    {"a", "and", "on", "the", "at", "in", "background", INSTANCE_CLASS_WORD, "plain"}
    | set(COLOURS) | set(SHAPES) | set(SIZES) | set(POSITIONS) | {w for w in PATTERN_WORDS.values() if w}
)
