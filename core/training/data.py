"""Where a training run's batches come from: a few images (personalization) or a stream (pre-training).

A data source gives the batch of a step from that step's generator, so a resumed run replays it exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from .images import augment
from .objective import Batch


class DataSource(Protocol):
    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch: ...


@dataclass
class FewShotImages:
    """A few images with their captions: each batch draws with repetition; augmentation (zoom-in crops, mirror)
    only when asked, since both can contradict a caption's position words."""

    pixels: torch.Tensor  # [N, 3, H, W] in -1..1 (prepare_images)
    captions: list[str]
    augment_scale: float = 1.0
    flip: bool = False

    def __len__(self) -> int:
        return len(self.pixels)

    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        pick = torch.randint(0, len(self.pixels), (batch_size,), generator=generator)
        images = self.pixels[pick]
        if self.augment_scale < 1 or self.flip:
            images = augment(images, generator, self.augment_scale, self.flip)
        return Batch(images, [self.captions[i] for i in pick])


@dataclass
class Stream:
    """Batches made afresh at every step (a domain's pre-training): `make(step, batch_size, generator)`."""

    make: Callable[[int, int, torch.Generator], Batch]

    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        return self.make(step, batch_size, generator)
