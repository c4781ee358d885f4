"""Attribute checkers: what a 64x64 image shows, read against the scene its prompt describes.

Background colour from the border pixels; objects by colour segmentation inside the region
their position phrase names; size from the object's extent; position from its centroid; shape
from the shape classifier on its mask. Text fidelity is the fraction of a prompt's attributes found.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from .metric_nets import crop_mask, load_shape_classifier
from .render import background, pattern_mask
from .scenes import Scene
from .vocabulary import (
    COLOURS,
    HELDOUT_DOMAINS,
    HELDOUT_PLACES,
    IMAGE_SIZE,
    PATTERN_SHADE,
    PATTERNS,
    POSITIONS,
    SHAPES,
    SIZES,
)

COLOUR_NAMES = list(COLOURS)
# Reference colours: each colour and its pattern shade, both named by the colour.
REFERENCES = np.array([COLOURS[c] for c in COLOUR_NAMES] + [np.multiply(COLOURS[c], PATTERN_SHADE)
                                                           for c in COLOUR_NAMES], np.float32)
REFERENCE_NAMES = COLOUR_NAMES + COLOUR_NAMES
BORDER = 3
MIN_OBJECT_PIXELS = 40
PAIR_PLACE_TOLERANCE = 5.5  # pixels; renders stay within 4 of their place, half of a centred creature is 7 off
BACKGROUND_TOLERANCE = 30.0  # RGB distance beyond which a pixel is not the background (creature reading) ...
NAMED_BACKGROUND_TOLERANCE = 70.0  # ... unless it is nearest to the background's colour and within this
MIN_CREATURE_EXTENT = 10  # pixels in both directions
CLOSING_RADIUS = 2  # pixels
MAX_CREATURE_SHARE = 0.6  # of the region: a patch larger than this is the background itself
SIZE_THRESHOLD = (SIZES["small"] + SIZES["large"]) / 2
ATTRIBUTES = ("background", "colour", "shape", "size", "position")
HALF = IMAGE_SIZE // 2
REGIONS = {  # where each position's object is looked for in two-object scenes
    "left": (slice(None), slice(0, HALF)), "right": (slice(None), slice(HALF, None)),
    "top": (slice(0, HALF), slice(None)), "bottom": (slice(HALF, None), slice(None)),
}


@dataclass
class ObjectReading:
    found: bool
    colour: str | None = None
    shape: str | None = None
    size: str | None = None
    position: str | None = None
    centroid: tuple[float, float] | None = None  # (x, y) in pixels


def nearest_reference(image: np.ndarray) -> np.ndarray:
    """Index into REFERENCES of every pixel's nearest reference colour. image: uint8 [H, W, 3]."""
    d = ((image[..., None, :].astype(np.float32) - REFERENCES) ** 2).sum(-1)
    return d.argmin(-1)


ALL_PATTERNS = (*PATTERNS, *(d for d in HELDOUT_DOMAINS if d != "snowline" and d not in HELDOUT_PLACES))  # marks
PHASES = 8  # scenes shift their pattern by 0..7 pixels in x and y


@dataclass
class BackgroundReading:
    colour: str
    pattern: str
    phase: tuple[int, int]
    scores: dict[str, float]  # per pattern: the best agreement of its marks with the image, over phases


@cache
def _pattern_bank() -> tuple[list[tuple[str, tuple[int, int]]], np.ndarray]:
    keys, masks = [], []
    for pattern in ALL_PATTERNS:
        for phase in ((0, 0),) if pattern == "plain" else [(x, y) for x in range(PHASES) for y in range(PHASES)]:
            keys.append((pattern, phase))
            masks.append(pattern_mask(pattern, phase))
    return keys, np.stack(masks).reshape(len(keys), -1)


def read_background_pattern(image: np.ndarray) -> BackgroundReading:
    """The background's colour (from the border), pattern and phase, read from the pixels alone: the pattern
    whose marks agree best with where the background shows its darker shade (objects excluded)."""
    labels = nearest_reference(image)
    colour = read_background(labels)
    index = COLOUR_NAMES.index(colour)
    shade = (labels == index + len(COLOUR_NAMES)).reshape(-1)
    known = shade | (labels == index).reshape(-1)
    keys, masks = _pattern_bank()
    agreement = ((masks == shade) & known).sum(1) / max(int(known.sum()), 1)
    best = int(agreement.argmax())
    scores = {p: float(max(a for (q, _), a in zip(keys, agreement, strict=True) if q == p)) for p in ALL_PATTERNS}
    return BackgroundReading(colour, keys[best][0], keys[best][1], scores)


def read_pattern(image: np.ndarray) -> tuple[str, tuple[int, int]]:
    """The background pattern of an image and its phase (exact on renders)."""
    reading = read_background_pattern(image)
    return reading.pattern, reading.phase


SNOW_THIRD = 21  # rows: the frame's top and bottom thirds, where a snowline is read
SNOW_SHARE, NO_SNOW_SHARE = 0.6, 0.3


def read_domain(image: np.ndarray) -> str | None:
    """Which held-out domain (HELDOUT_DOMAINS) an image shows, or None (exact on renders): a snowline when the
    frame's bottom third is mostly white and its top third mostly not; a held-out mark pattern the pattern reader
    finds; a held-out place where the foreground's centroid sits."""
    white = nearest_reference(image) == COLOUR_NAMES.index("white")
    frame = np.ones(white.shape, bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    bottom, top = frame.copy(), frame.copy()
    bottom[:IMAGE_SIZE - SNOW_THIRD] = False
    top[SNOW_THIRD:] = False
    if white[bottom].mean() >= SNOW_SHARE and white[top].mean() <= NO_SNOW_SHARE:
        return "snowline"
    reading = read_background_pattern(image)
    if reading.pattern in HELDOUT_DOMAINS:
        return reading.pattern
    return _held_out_place(image, reading)


PLACE_TOLERANCE = 9  # pixels (each axis) between the foreground's centroid and a held-out place's anchor: the
# corner's quadrant, 19 px from the nearest captioned place
FOREGROUND_DIFFERENCE = 40  # levels (any channel) from the background read, where an object is


def foreground(image: np.ndarray, reading: BackgroundReading | None = None) -> np.ndarray:
    """[H, W] bool: where the image differs from the background read from it (pattern and phase included)."""
    reading = reading or read_background_pattern(image)
    plain = background(reading.colour, reading.pattern, reading.phase)
    return np.abs(image.astype(np.float32) - plain).max(-1) > FOREGROUND_DIFFERENCE


def subject_crop(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: the image's foreground on black, in the square around its bounding box, resized
    (area): what a render shows of its subject, whatever the scene's background and place. The whole image
    when nothing stands out."""
    mask = foreground(image)
    if mask.sum() < MIN_OBJECT_PIXELS:
        square = image
    else:
        ys, xs = np.nonzero(mask)
        side = int(max(ys.max() - ys.min(), xs.max() - xs.min())) + 1
        top, left = (int(ys.min() + ys.max()) + 1 - side) // 2, (int(xs.min() + xs.max()) + 1 - side) // 2
        held = np.pad(np.where(mask[..., None], image, 0).astype(np.uint8), ((side, side), (side, side), (0, 0)))
        square = held[top + side:top + 2 * side, left + side:left + 2 * side]
    resized = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(square)).permute(2, 0, 1)[None]
                                              .float(), size=(size, size), mode="area")
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def _held_out_place(image: np.ndarray, reading: BackgroundReading) -> str | None:
    """A layout domain (HELDOUT_PLACES) when the image's foreground (what differs from the background read from
    it, pattern and phase included) sits at its place."""
    mask = foreground(image, reading)
    if mask.sum() < MIN_OBJECT_PIXELS:
        return None
    ys, xs = np.nonzero(mask)
    centre = np.array([xs.mean(), ys.mean()])
    for place, anchor in HELDOUT_PLACES.items():
        if np.abs(centre - np.array(anchor)).max() <= PLACE_TOLERANCE:
            return place
    return None


def read_background(labels: np.ndarray) -> str:
    frame = np.ones(labels.shape, bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    names = np.array(REFERENCE_NAMES)[labels[frame]]
    values, counts = np.unique(names, return_counts=True)
    return str(values[counts.argmax()])


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (drops stray pixels)."""
    labels = np.zeros(mask.shape, np.int32)
    best, best_size, current = 0, 0, 0
    for y, x in zip(*np.nonzero(mask), strict=True):
        if labels[y, x]:
            continue
        current += 1
        stack, size = [(y, x)], 0
        labels[y, x] = current
        while stack:
            cy, cx = stack.pop()
            size += 1
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else np.zeros(mask.shape, bool)


def read_object(labels: np.ndarray, background: str, region: tuple[slice, slice] | None) -> ObjectReading:
    """The dominant non-background object inside `region` (the whole image when None)."""
    names = np.array(REFERENCE_NAMES)[labels]
    foreground = _within(names != background, region)
    if foreground.sum() < MIN_OBJECT_PIXELS:
        return ObjectReading(found=False)
    values, counts = np.unique(names[foreground], return_counts=True)
    colour = str(values[counts.argmax()])
    mask = largest_component(foreground & (names == colour))
    if mask.sum() < MIN_OBJECT_PIXELS:
        return ObjectReading(found=False)
    ys, xs = np.nonzero(mask)
    extent = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    centre = np.array([xs.mean(), ys.mean()])
    position = _nearest_position(centre)
    with torch.no_grad():
        logits = load_shape_classifier()(torch.from_numpy(crop_mask(mask))[None, None])
    size = "large" if extent >= SIZE_THRESHOLD else "small"
    shape = SHAPES[int(logits.argmax())]
    return ObjectReading(True, colour, shape, size, position, (float(centre[0]), float(centre[1])))


def _closed(mask: np.ndarray, radius: int) -> np.ndarray:
    """Morphological closing with a square: spots of a creature that happen to be the background's colour
    join the rest of it."""
    def spread(m: np.ndarray, grow: bool) -> np.ndarray:
        padded = np.pad(m, radius, constant_values=not grow)
        shifted = [padded[dy:dy + m.shape[0], dx:dx + m.shape[1]]
                   for dy in range(2 * radius + 1) for dx in range(2 * radius + 1)]
        return np.any(shifted, axis=0) if grow else np.all(shifted, axis=0)

    return spread(spread(mask, True), False)


def _within(mask: np.ndarray, region: tuple[slice, slice] | None) -> np.ndarray:
    """`mask` kept inside `region` only (the whole image when None)."""
    if region is None:
        return mask
    inside = np.zeros(mask.shape, bool)
    inside[region] = True
    return mask & inside


def _nearest_position(centre: np.ndarray) -> str:
    return min(POSITIONS, key=lambda p: float(((np.array(POSITIONS[p]) - centre) ** 2).sum()))


def _observed_background(image: np.ndarray, labels: np.ndarray, background: str) -> tuple[np.ndarray, np.ndarray]:
    """The background colour and its pattern shade as the image's border shows them (a generated red may be
    orange-red): the median of the border pixels nearest to each; the vocabulary's where the border has none."""
    frame = np.ones(image.shape[:2], bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    labels = labels[frame]
    pixels = image[frame].astype(np.float32)
    index = COLOUR_NAMES.index(background)
    found = []
    for reference, expected in ((index, COLOURS[background]),
                                (index + len(COLOUR_NAMES), np.multiply(COLOURS[background], PATTERN_SHADE))):
        chosen = pixels[labels == reference]
        found.append(np.median(chosen, axis=0) if len(chosen) >= MIN_OBJECT_PIXELS else np.array(expected, np.float32))
    return found[0], found[1]


def read_creature(image: np.ndarray, labels: np.ndarray, background: str, region: tuple[slice, slice] | None
                  ) -> ObjectReading:
    """A creature inside `region`: its bands and spots are any colours, so it is the largest patch (closed over
    small gaps) of pixels that are not background. Background: within BACKGROUND_TOLERANCE of a tone between the
    background's colour and its pattern shade as the border shows them (blurred pattern marks), or nearest to
    that colour and within NAMED_BACKGROUND_TOLERANCE. The patch is at least MIN_CREATURE_EXTENT wide and tall
    (a pattern's stripe is not) and at most MAX_CREATURE_SHARE of the region."""
    colour, shade = _observed_background(image, labels, background)
    pixels = image.astype(np.float32)
    along = np.clip(((pixels - shade) @ (colour - shade)) / float((colour - shade) @ (colour - shade)), 0, 1)
    distance = np.linalg.norm(pixels - (shade + along[..., None] * (colour - shade)), axis=-1)
    named = np.array(REFERENCE_NAMES)[labels] == background
    foreground = _within((distance > BACKGROUND_TOLERANCE) & ~(named & (distance <= NAMED_BACKGROUND_TOLERANCE)),
                         region)
    mask = largest_component(_closed(foreground, CLOSING_RADIUS))
    ys, xs = np.nonzero(mask)
    area = foreground.size if region is None else foreground[region].size
    if (mask.sum() < MIN_OBJECT_PIXELS or mask.sum() > MAX_CREATURE_SHARE * area
            or min(np.ptp(xs), np.ptp(ys)) + 1 < MIN_CREATURE_EXTENT):
        return ObjectReading(found=False)
    centre = np.array([xs.mean(), ys.mean()])
    return ObjectReading(True, position=_nearest_position(centre), centroid=(float(centre[0]), float(centre[1])))


def _near_its_place(reading: ObjectReading, position: str) -> bool:
    """In a two-object scene, a creature's patch inside its half is centred near its place along the split (one
    creature in the centre, cut in two by the halves, is not two creatures)."""
    axis = 0 if position in ("left", "right") else 1
    return abs(reading.centroid[axis] - POSITIONS[position][axis]) <= PAIR_PLACE_TOLERANCE


def check_image(image: np.ndarray, scene: Scene) -> dict[str, list[bool]]:
    """For each attribute kind, whether each of the scene's instances of it is found in the image."""
    labels = nearest_reference(image)
    background = read_background(labels)
    results: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    results["background"].append(background == scene.background)
    two = len(scene.objects) > 1
    for obj in scene.objects:
        region = REGIONS.get(obj.position) if two else None
        if obj.instance is not None:  # creatures: only their presence where the prompt puts them is checkable
            reading = read_creature(image, labels, background, region)
            results["position"].append(reading.found and reading.position == obj.position
                                       and (not two or _near_its_place(reading, obj.position)))
            continue
        reading = read_object(labels, background, region)
        results["colour"].append(reading.found and reading.colour == obj.colour)
        results["shape"].append(reading.found and reading.shape == obj.shape)
        results["size"].append(reading.found and reading.size == obj.size)
        results["position"].append(reading.found and reading.position == obj.position)
    return results


PAIR_ROWS = ("both_creatures", "creature", "shape_colour", "shape_shape", "shape_size", "shape_position",
             "background")


def pair_accuracy(images: np.ndarray, scenes: list[Scene]) -> dict[str, tuple[float, int]]:
    """Scenes with two subjects, per check: (fraction found, how many scored). "both_creatures": in a
    two-creature scene, a creature at each of its places; "creature" and "shape_*": in a creature-with-shape
    scene, the creature at its place and each of the shape's attributes; "background": every scene's colour."""
    totals: dict[str, list[bool]] = {row: [] for row in PAIR_ROWS}
    for image, scene in zip(images, scenes, strict=True):
        if len(scene.objects) != 2:
            raise ValueError(f"pair_accuracy scores scenes with two objects, not '{scene.caption()}'")
        checks = check_image(image, scene)
        totals["background"] += checks["background"]
        shapes = [o for o in scene.objects if o.instance is None]
        if not shapes:
            totals["both_creatures"].append(all(checks["position"]))
            continue
        creature_first = scene.objects[0].instance is not None
        creature_ok, shape_position = checks["position"] if creature_first else checks["position"][::-1]
        totals["creature"].append(creature_ok)
        totals["shape_position"].append(shape_position)
        for attribute in ("colour", "shape", "size"):
            totals[f"shape_{attribute}"] += checks[attribute]
    return {row: (float(np.mean(v)), len(v)) for row, v in totals.items() if v}


def text_fidelity(image: np.ndarray, scene: Scene) -> float:
    """Fraction of the prompt's checkable attributes found in the image (our CLIP-T)."""
    checks = [ok for values in check_image(image, scene).values() for ok in values]
    return float(np.mean(checks))


def attribute_accuracy(images: np.ndarray, scenes: list[Scene]) -> dict[str, float]:
    """Per attribute kind: the fraction of its instances found, over a set of images."""
    totals: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    for image, scene in zip(images, scenes, strict=True):
        for attribute, values in check_image(image, scene).items():
            totals[attribute] += values
    return {a: float(np.mean(v)) for a, v in totals.items() if v}
