"""Rendering scenes to 64x64 RGB arrays: shapes, background patterns, instance sprites."""

from __future__ import annotations

from functools import cache

import numpy as np

from .vocabulary import COLOURS, IMAGE_SIZE, INSTANCE_SIZE, PATTERN_SHADE

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
    if pattern == "zigzag":  # the held-out style
        return ((y + np.abs((x % 12) - 6)) // 4) % 2 == 0
    raise ValueError(f"unknown pattern {pattern}")


def background(colour: str, pattern: str, phase: tuple[int, int] = (0, 0)) -> np.ndarray:
    base = np.array(COLOURS[colour], np.float32)
    image = np.broadcast_to(base, (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
    image[pattern_mask(pattern, phase)] = base * PATTERN_SHADE
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


@cache
def instance_sprite(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A unique creature: (mask, RGB) of INSTANCE_SIZE pixels, from its seed alone.

    A blob body from a random radial profile, two or three body colours in a random pattern
    (bands, spots or halves), and two eyes: recognisable as one individual, not describable in words.
    """
    rng = np.random.default_rng(seed)
    n = INSTANCE_SIZE
    c = (np.arange(n) + 0.5) / n * 2 - 1
    x, y = np.meshgrid(c, c)
    angle, radius = np.arctan2(y, x), np.sqrt(x**2 + y**2)
    profile = 0.78 + sum(rng.uniform(-0.12, 0.12) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in range(2, 5))
    mask = radius <= profile
    palette = rng.uniform(30, 245, size=(3, 3)).astype(np.float32)
    kind = rng.integers(3)
    freq, tilt = rng.uniform(2, 5), rng.uniform(0, np.pi)
    u = x * np.cos(tilt) + y * np.sin(tilt)
    if kind == 0:
        index = (np.floor((u + 1) * freq) % 2).astype(int)
    elif kind == 1:
        spots = rng.uniform(-0.7, 0.7, size=(rng.integers(3, 7), 2))
        index = np.zeros((n, n), int)
        for sx, sy in spots:
            index[(x - sx) ** 2 + (y - sy) ** 2 <= rng.uniform(0.02, 0.06)] = 1
    else:
        index = (u > rng.uniform(-0.3, 0.3)).astype(int)
    index[(radius > profile - 0.18) & mask] = 2  # a rim in the third colour
    rgb = palette[index]
    eye_y, eye_dx = rng.uniform(-0.45, -0.1), rng.uniform(0.18, 0.35)
    for ex in (-eye_dx, eye_dx):
        rgb[(x - ex) ** 2 + (y - eye_y) ** 2 <= 0.012] = (20, 20, 20)
    return mask, rgb
