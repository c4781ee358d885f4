"""The other two extension points of the sampling loop, with their do-nothing defaults.

- A conditioning provider gives each step's (cond, uncond): the same every step by default; the
  Concept Encoder re-encodes at every step from the current latents.
- An attention controller is attached to the UNet for the run and may adjust the latents before a
  step (Attend-and-Excite style updates of the Concept Memory's artist).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .conditioning import Conditioning
from .guidance import Denoise, Step


class ConditioningProvider(Protocol):
    def __call__(self, step: Step, latents: torch.Tensor) -> tuple[Conditioning, Conditioning]: ...


@dataclass
class StaticConditioning:
    cond: Conditioning
    uncond: Conditioning

    def __call__(self, step: Step, latents: torch.Tensor) -> tuple[Conditioning, Conditioning]:
        return self.cond, self.uncond


class AttentionController:
    """Base class: attach/detach hooks on the UNet, and optionally adjust latents before each step."""

    def attach(self, unet: torch.nn.Module) -> None:
        pass

    def detach(self, unet: torch.nn.Module) -> None:
        pass

    def before_step(
        self, step: Step, latents: torch.Tensor, denoise: Denoise, cond: Conditioning
    ) -> torch.Tensor:
        return latents
