"""Loss terms of the training loop, beside its objective.

A term is called once per step with the run (model, trainable set, the denoising-loss function, the
teacher) and that step's generator, and returns a scalar to add to the loss. Methods bring their own
terms (a parameter-offset penalty, replay, distillation); prior preservation is here because several
recipes use it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from ..errors import InputError

if TYPE_CHECKING:
    from .fewshot import TrainingRun

class LossTerm(Protocol):
    name: str

    def __call__(self, run: TrainingRun, step: int, generator: torch.Generator) -> torch.Tensor: ...


@dataclass
class PriorPreservation:
    """DreamBooth's prior-preservation loss: the denoising loss on class images the base model made for
    class prompts (generated once and cached by the caller), weighted by `weight`."""

    class_images: torch.Tensor  # [M, 3, H, W] in -1..1
    class_captions: list[str]
    weight: float = 1.0
    name: str = "prior_preservation"

    def __post_init__(self):
        if len(self.class_images) == 0 or len(self.class_images) != len(self.class_captions):
            raise InputError("prior preservation needs class images, one caption each.")

    def __call__(self, run, step, generator):
        pick = torch.randint(0, len(self.class_images), (run.config.batch_size,), generator=generator)
        return self.weight * run.denoising_loss(self.class_images[pick], [self.class_captions[i] for i in pick],
                                                generator)
