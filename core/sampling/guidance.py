"""Guidance strategies: how the noise predictions of one step are combined.

A strategy gets the `denoise` function (one UNet evaluation of a batch), the scaled latents, the
timestep and both conditionings, and returns the guided model output. It owns how many UNet
evaluations a step costs, so weaker-model guidance can swap weights between the two passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from .conditioning import Conditioning

Denoise = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]


@dataclass(frozen=True)
class Step:
    index: int  # 0-based position in the schedule
    total: int
    timestep: torch.Tensor


class Guidance(Protocol):
    def __call__(
        self, denoise: Denoise, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, uncond: Conditioning, step: Step
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class CFG:
    """Classifier-free guidance: uncond + scale * (cond - uncond), both branches in one UNet batch."""

    scale: float = 7.5

    def __call__(self, denoise, x, t, cond, uncond, step):
        if self.scale == 1.0:
            return denoise(x, t, cond)
        out = denoise(torch.cat([x, x]), t, Conditioning.cat([uncond, cond]))
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + self.scale * (out_cond - out_uncond)
