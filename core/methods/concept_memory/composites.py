"""Pair composites: a new concept learned beside the earlier ones, so that a prompt naming two of them draws both.

Each concept's images show it alone, and its trigger is learned only at the head of its captions; the text
encoder is causal, so in a prompt naming two concepts the second one's words carry the first phrase, a context it
was never learned in (benchmarks docs: the second-named creature kept 0.63x of its likeness alone, the first
0.89x). For each training image whose caption says a side ("on the right"), the memory as it is draws an earlier
concept at the opposite side on the same backdrop (the rest of the caption), and the image's half that holds the
new concept is joined to the drawing's other half, under the pair caption, the upper or left one named first
("a <b> dog on the left and a <a> cat on the right, ..."). The new concept learns from its own half only (the loss
masked to it in latent pixels: `PairComposites.masks`, replayed as an ImageReplay's `masks`): the earlier
concept's half is not a target, so it does not learn from the memory's drawing of it. There the memory before the
task is the teacher instead (the ImageReplay's `teacher_weight`: the distillation weight): the pair caption names
the earlier concept, and without it the new concept's half taught the UNet to read the earlier concept's words as
the new concept (the earlier concepts fell most in the tasks after, benchmarks docs). This is Cut-Mix (SVDiff's
Cut-Mix-Unmix) built from what a memory holds, with a masked loss and a distilled rest; L2DM does not say how its
memory trains pairs (METHODS.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...model import Model
from ...sampling import CFG, sample

OPPOSITE_SIDES = {"on the left": "on the right", "on the right": "on the left", "at the top": "at the bottom",
                  "at the bottom": "at the top"}
FIRST_NAMED = ("on the left", "at the top")  # a pair caption names the left or upper concept first
DRAW_STEPS, DRAW_CFG = 25, 5.0


@dataclass
class PairComposites:
    """Composite images [M, 3, H, W] in -1..1, their pair captions ("{trigger}" for the new concept), and the
    masks [M, 1, h, w] (latent pixels) of the new concept's half."""

    images: torch.Tensor
    captions: list[str]
    masks: torch.Tensor


def side_of(caption: str) -> str | None:
    """The side a caption puts its subject at (OPPOSITE_SIDES' phrases, followed by a comma or the end)."""
    for side in OPPOSITE_SIDES:
        if f" {side}," in caption or caption.endswith(f" {side}"):
            return side
    return None


def half_mask(side: str, height: int, width: int) -> torch.Tensor:
    """[height, width] float: 1 on the half at `side`."""
    mask = torch.zeros(height, width)
    if side == "on the left":
        mask[:, : width // 2] = 1
    elif side == "on the right":
        mask[:, width // 2:] = 1
    elif side == "at the top":
        mask[: height // 2] = 1
    else:
        mask[height // 2:] = 1
    return mask


def pair_composites(memory: Model, pixels: torch.Tensor, captions: list[str] | None,
                    earlier: list[tuple[str, str]], seed: int) -> PairComposites | None:
    """Composites of the new concept's images (`pixels` [N, 3, H, W] in -1..1, `captions` with "{trigger}") with
    the earlier concepts (`earlier`: (trigger, class word) in the memory's order, taken in turn), drawn by
    `memory`; None when no caption says a side or there is no earlier concept."""
    if not earlier or not captions:
        return None
    sided = [(i, side_of(c)) for i, c in enumerate(captions)]
    sided = [(i, side) for i, side in sided if side is not None]
    if not sided:
        return None
    prompts, pair_captions = [], []
    for k, (i, side) in enumerate(sided):
        trigger, class_word = earlier[k % len(earlier)]
        other = f"a {trigger} {class_word} {OPPOSITE_SIDES[side]}"
        backdrop = captions[i].split(f" {side}", 1)[1]  # ", white background" (or "")
        prompts.append(other + backdrop)
        new = captions[i].split(f" {side}", 1)[0] + f" {side}"  # "a {trigger} on the right"
        first, second = (new, other) if side in FIRST_NAMED else (other, new)
        pair_captions.append(f"{first} and {second}{backdrop}")
    drawn = sample(memory, prompts, seed=seed, steps=DRAW_STEPS, guidance=CFG(DRAW_CFG)).images
    drawn = drawn.permute(0, 3, 1, 2).to(pixels) * 2 - 1
    height, width = pixels.shape[-2:]
    scale = memory.vae_scale_factor
    images, masks = [], []
    for k, (i, side) in enumerate(sided):
        keep = half_mask(side, height, width).to(pixels)
        images.append(pixels[i] * keep + drawn[k] * (1 - keep))
        masks.append(half_mask(side, height // scale, width // scale))
    return PairComposites(torch.stack(images), pair_captions, torch.stack(masks)[:, None])

