"""Where a training run's batches come from: a few images (personalization) or a stream (pre-training).

A data source gives the batch of a step from that step's generator, so a resumed run replays it exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .images import augment
from .objective import Batch, Posterior, encode_posterior


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
    _encoded: tuple[object, Posterior] | None = field(default=None, repr=False)  # (the VAE, the images' latents)

    def __len__(self) -> int:
        return len(self.pixels)

    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        pick = torch.randint(0, len(self.pixels), (batch_size,), generator=generator)
        images = self.pixels[pick]
        captions = [self.captions[i] for i in pick]
        if self.augment_scale < 1 or self.flip:
            return Batch(augment(images, generator, self.augment_scale, self.flip), captions)
        return Batch(images, captions, posterior=lambda model: self.posterior(model).select(pick))

    def posterior(self, model) -> Posterior:
        """The images' latent distribution under the model's VAE, encoded once: unaugmented, every batch draws
        from the same images."""
        if self._encoded is None or self._encoded[0] is not model.vae:
            self._encoded = (model.vae, encode_posterior(model, self.pixels))
        return self._encoded[1]


@dataclass
class Stream:
    """Batches made afresh at every step (a domain's pre-training): `make(step, batch_size, generator)`."""

    make: Callable[[int, int, torch.Generator], Batch]

    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        return self.make(step, batch_size, generator)
