"""Guidance strategies: how the noise predictions of one step are combined.

A strategy is set up once per sampling call with the `SamplingContext` (the model, what its patches
changed, the scheduler, each image's generator, and a way to re-encode the prompts) and returns the
object that guides each step: it gets the neutral `denoise(x, t, cond)` (one UNet evaluation of a
batch), the scaled latents, the timestep, both conditionings and the `Step`, and returns the guided
model output. It owns how many UNet evaluations a step costs. After each scheduler step it sees the
new latents and the predicted x0. Methods add strategies of their own (personalization guidance, SGE
offsets) on this protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..model import Conditioning, Denoise, Model, PatchState


@dataclass(frozen=True)
class Step:
    index: int  # position in the full schedule (an img2img run starts past 0)
    total: int  # steps of the full schedule
    timestep: torch.Tensor
    alpha_bar: torch.Tensor  # the schedule's cumulative alpha at this timestep (signal share sqrt(alpha_bar))
    generators: list[torch.Generator]  # image i's own generator: randomness here keeps one seed, one image


@dataclass
class SamplingContext:
    """What a strategy may need, handed to it once per sampling call."""

    model: Model
    patches: PatchState  # what the model's patches (applied concepts, ...) changed, while they are in effect
    scheduler: object
    generators: list[torch.Generator]
    encode: Callable[[str], Conditioning]  # re-encode "prompt" / "negative" as the text encoders are now


class Guidance:
    """Base of the strategies: `setup` returns what guides the steps (by default the strategy itself)."""

    def setup(self, context: SamplingContext) -> Guidance:
        return self

    def __call__(self, denoise: Denoise, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                 uncond: Conditioning, step: Step) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, step: Step, latents: torch.Tensor, pred_x0: torch.Tensor) -> None:
        """Called after the scheduler step with the new latents and the predicted x0."""


@dataclass(frozen=True)
class CFG(Guidance):
    """Classifier-free guidance: uncond + scale * (cond - uncond), both branches in one UNet batch."""

    scale: float = 7.5

    def __call__(self, denoise, x, t, cond, uncond, step):
        if self.scale == 1.0:
            return denoise(x, t, cond)
        out = denoise(torch.cat([x, x]), t, Conditioning.cat([uncond, cond]))
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + self.scale * (out_cond - out_uncond)
