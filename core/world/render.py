"""Rendering scenes to 64x64 RGB arrays: shapes, background patterns, instance sprites."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

from .vocabulary import (
    BODY_SHAPES,
    COLOURS,
    CREATURE_COLOURS,
    IMAGE_SIZE,
    INSTANCE_CLASS_WORD,
    INSTANCE_SIZE,
    MARKINGS,
    PATTERN_SHADE,
    SNOWLINE_ROW,
)

SUPERSAMPLE = 4


@cache
def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean mask (size x size) of a shape filling its box, drawn at 4x and reduced (coverage >= 0.5)."""
    n = size * SUPERSAMPLE
    c = (np.arange(n) + 0.5) / n * 2 - 1  # -1..1
    x, y = np.meshgrid(c, c)
    if shape == "circle":
        m = x**2 + y**2 <= 1
    elif shape == "square":
        m = (np.abs(x) <= 0.9) & (np.abs(y) <= 0.9)
    elif shape == "triangle":
        m = (y <= 0.9) & (y >= -0.95 + 2 * np.abs(x) * 0.97)
    elif shape == "diamond":
        m = np.abs(x) + np.abs(y) <= 1
    elif shape == "cross":
        m = ((np.abs(x) <= 0.3) & (np.abs(y) <= 1)) | ((np.abs(y) <= 0.3) & (np.abs(x) <= 1))
    elif shape == "star":
        angle = np.arctan2(x, -y)
        radius = np.sqrt(x**2 + y**2)
        k = np.abs(((angle / (2 * np.pi / 5)) % 1) - 0.5) * 2  # 0 at the points, 1 between
        m = radius <= 1.0 - 0.55 * k
    elif shape == "heart":
        yy = -y * 1.15 + 0.25
        m = (x**2 + yy**2 - 0.55) ** 3 - x**2 * yy**3 * 0.9 <= 0
    else:
        raise ValueError(f"unknown shape {shape}")
    return m.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3)) >= 0.5


def pattern_mask(pattern: str, phase: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Where the darker pattern marks go on the background."""
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    x, y = x + phase[0], y + phase[1]
    if pattern == "plain":
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
    if pattern == "striped":
        return (x // 4) % 2 == 0
    if pattern == "checked":
        return ((x // 8) + (y // 8)) % 2 == 0
    if pattern == "dotted":
        return ((x % 8) - 3.5) ** 2 + ((y % 8) - 3.5) ** 2 <= 4
    if pattern == "zigzag":  # a held-out domain
        return ((y + np.abs((x % 12) - 6)) // 4) % 2 == 0
    if pattern == "big_checks":  # a held-out domain
        return ((x // 16) + (y // 16)) % 2 == 0
    if pattern == "snowline":  # a held-out domain: no marks; its white bottom third is painted by background()
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
    raise ValueError(f"unknown pattern {pattern}")


def background(colour: str, pattern: str, phase: tuple[int, int] = (0, 0)) -> np.ndarray:
    base = np.array(COLOURS[colour], np.float32)
    image = np.broadcast_to(base, (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
    image[pattern_mask(pattern, phase)] = base * PATTERN_SHADE
    if pattern == "snowline":
        image[SNOWLINE_ROW:] = COLOURS["white"]
    return image


def paste(image: np.ndarray, mask: np.ndarray, colours: np.ndarray | tuple, centre: tuple[int, int]) -> None:
    """Paint `colours` (an RGB triple or an HxWx3 array) where `mask` is set, centred at `centre` (x, y)."""
    h, w = mask.shape
    x0, y0 = centre[0] - w // 2, centre[1] - h // 2
    xs, ys = slice(max(x0, 0), min(x0 + w, IMAGE_SIZE)), slice(max(y0, 0), min(y0 + h, IMAGE_SIZE))
    sub = mask[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
    region = image[ys, xs]
    fill = np.asarray(colours, np.float32)
    if fill.ndim == 3:
        fill = fill[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0][sub]
    region[sub] = fill


@dataclass(frozen=True)
class CreatureTraits:
    """What words can say of a creature. `marking` None: a plain body (its `marking_colour` is then None too)."""
    colour: str
    body: str
    marking: str | None
    marking_colour: str | None

    def words(self, said: tuple[str, ...] = ("body", "colour", "marking")) -> str:
        """The creature's description, saying only the traits in `said`: "a round green creature with orange
        spots"; "a creature" when it says none."""
        adjectives = [getattr(self, t) for t in ("body", "colour") if t in said]
        words = " ".join(["a", *adjectives, INSTANCE_CLASS_WORD])
        if "marking" in said and self.marking is not None:
            words += f" with {self.marking_colour} {self.marking}"
        return words


def creature_traits(seed: int) -> CreatureTraits:
    """The sayable traits of creature `seed` (the first draws of its seed's generator)."""
    rng = np.random.default_rng(seed)
    colours = list(CREATURE_COLOURS)
    colour = colours[int(rng.integers(len(colours)))]
    body = BODY_SHAPES[int(rng.integers(len(BODY_SHAPES)))]
    kind = int(rng.integers(len(MARKINGS) + 1))
    if kind == len(MARKINGS):
        return CreatureTraits(colour, body, None, None)
    others = [c for c in colours if c != colour]
    return CreatureTraits(colour, body, MARKINGS[kind], others[int(rng.integers(len(others)))])


def _jittered(colour: str, rng: np.random.Generator, spread: float) -> np.ndarray:
    return np.clip(np.array(CREATURE_COLOURS[colour], np.float32) + rng.uniform(-spread, spread, 3), 0, 255)


@lru_cache(maxsize=4096)
def instance_sprite(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A unique creature: (mask, RGB) of INSTANCE_SIZE pixels, from its seed alone.

    Its traits (`creature_traits`) fix the body colour, the body shape (round, tall, wide, boxy) and the
    markings (spots, stripes or none, in a named colour); the rest is detail words cannot say: the exact hues,
    the body's proportions and outline, where the spots sit and how the stripes run, where the eyes are.
    """
    traits = creature_traits(seed)
    rng = np.random.default_rng([seed, 1])
    n = INSTANCE_SIZE
    c = (np.arange(n) + 0.5) / n * 2 - 1
    x, y = np.meshgrid(c, c)
    long_side, short_side = rng.uniform(0.88, 0.98), rng.uniform(0.55, 0.68)
    half_width, half_height = {"round": (long_side, long_side), "tall": (short_side, long_side),
                               "wide": (long_side, short_side), "boxy": (long_side * 0.9, long_side * 0.9)
                               }[traits.body]
    u, v = x / half_width, y / half_height
    angle = np.arctan2(v, u)
    wobble = 1 + sum(rng.uniform(-0.06, 0.06) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3))
    exponent = 4.0 if traits.body == "boxy" else 2.0
    mask = (np.abs(u) ** exponent + np.abs(v) ** exponent) ** (1 / exponent) <= wobble
    body = _jittered(traits.colour, rng, 22)
    rgb = np.broadcast_to(body, (n, n, 3)).copy()
    if traits.marking is not None:
        marks = np.zeros((n, n), bool)
        if traits.marking == "spots":
            for _ in range(int(rng.integers(3, 6))):
                sx, sy = rng.uniform(-0.55, 0.55) * half_width, rng.uniform(-0.55, 0.55) * half_height
                marks |= (x - sx) ** 2 + (y - sy) ** 2 <= rng.uniform(0.18, 0.26) ** 2
        else:
            tilt = rng.uniform(-0.5, 0.5) + (np.pi / 2 if rng.random() < 0.5 else 0)
            along = x * np.cos(tilt) + y * np.sin(tilt)
            marks = (np.floor((along + 1) * rng.uniform(1.6, 2.4) + rng.uniform(0, 1)) % 2).astype(bool)
        rgb[marks] = _jittered(traits.marking_colour, rng, 18)
    rim = mask & ~(np.abs(u) ** exponent + np.abs(v) ** exponent <= (wobble - 0.16) ** exponent)
    rgb[rim] = body * 0.6
    eye_y, eye_dx = rng.uniform(-0.45, -0.15) * half_height, rng.uniform(0.25, 0.45) * half_width
    for ex in (-eye_dx, eye_dx):
        rgb[(x - ex) ** 2 + (y - eye_y) ** 2 <= 0.015] = (20, 20, 20)
    return mask, rgb
