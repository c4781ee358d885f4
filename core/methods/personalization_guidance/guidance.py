"""Personalization guidance and autoguidance as guidance strategies of the one sampling loop.

Both are `weak + w * (strong - weak)` with `strong = eps(x, c; theta_ft)`, like CFG, and differ only in
the weak branch:
- personalization guidance: eps(x, negative; theta_w), theta_w = theta_pre + omega (theta_ft - theta_pre);
- autoguidance (Karras et al. 2024): eps(x, c; theta_w).
Both branches go through one UNet batch (two evaluations per step, as CFG), except for full weight offsets,
which take one pass per omega. omega = 1 is CFG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ...errors import InputError
from ...model import Conditioning, Denoise, Model
from ...sampling import CFG, Guidance, SamplingContext
from .weak_model import WeakModel, checkpoint_difference

GUIDANCE_MODES = ("personalization", "cfg", "autoguidance")


class WeakPasses:
    """UNet evaluations on the weak model: `run(denoise, x, t, cond, omega)` with one omega per sample (1 is the
    fine-tuned model); `conditioning` encodes the weak model's prompt where its text encoders differ."""

    def __init__(self, weak: WeakModel, encode: Callable[[str], Conditioning]):
        self.weak, self.encode = weak, encode
        self._encoded: dict[tuple[str, float], Conditioning] = {}

    def run(self, denoise: Denoise, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
            omega: Sequence[float]) -> torch.Tensor:
        omega = [float(o) for o in omega]
        if self.weak.per_sample or len(set(omega)) == 1:
            with self.weak.at(omega):
                return denoise(x, t, cond)
        outputs = {}
        for value in dict.fromkeys(omega):  # full weight offsets: one pass per omega, with the weights swapped
            index = torch.tensor([i for i, o in enumerate(omega) if o == value], device=x.device)
            with self.weak.at(value):
                outputs[value] = (index, denoise(x[index], t, cond.select(index)))
        first = next(iter(outputs.values()))[1]
        out = first.new_empty((len(omega), *first.shape[1:]))
        for index, value in outputs.values():
            out[index] = value
        return out

    def conditioning(self, reads: str, omega: float, given: Conditioning) -> Conditioning:
        """The weak branch's conditioning of `reads` ('prompt' or 'negative'); `given` is the fine-tuned one."""
        if omega == 1.0 or not self.weak.changes_text:
            return given
        key = (reads, omega)
        if key not in self._encoded:
            with self.weak.at(omega):
                self._encoded[key] = self.encode(reads)
        return self._encoded[key]


@dataclass(frozen=True)
class WeakModelGuidance(Guidance):
    """weak + scale * (strong - weak), the weak branch on theta_w at omega: constant (`omega_end` None) or
    linear from `omega_start` at the first step to `omega_end` at the last. theta_pre is the model without its
    patches, or `pretrained` for a fine-tuned checkpoint."""

    scale: float = 7.5
    omega_start: float = 0.5
    omega_end: float | None = None
    pretrained: Model | None = field(default=None, compare=False, repr=False)
    weak_reads: ClassVar[str] = "negative"  # which prompt the weak branch reads

    def __post_init__(self):
        for name in ("scale", "omega_start", "omega_end"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(float(value)):
                raise InputError(f"{name} must be a number (got {value}).")

    def omega(self, step) -> float:
        if self.omega_end is None or step.total == 1:
            return float(self.omega_start)
        return float(self.omega_start + (self.omega_end - self.omega_start) * step.index / (step.total - 1))

    def setup(self, context: SamplingContext) -> Guidance:
        weak = WeakModel.of(context.patches)
        if self.pretrained is not None:
            weak.dense += checkpoint_difference(context.model, self.pretrained)
        if weak.empty:
            raise InputError("this guidance needs a fine-tuned model to weaken: apply a concept to the model, or give "
                             "the fine-tuned model with its base model; without either use CFG.")
        return _WeakModelSteps(self, WeakPasses(weak, context.encode))


@dataclass
class _WeakModelSteps(Guidance):
    strategy: WeakModelGuidance
    passes: WeakPasses

    def __call__(self, denoise, x, t, cond, uncond, step):
        omega = self.strategy.omega(step)
        reads = self.strategy.weak_reads
        weak_cond = self.passes.conditioning(reads, omega, cond if reads == "prompt" else uncond)
        n = x.shape[0]
        out = self.passes.run(denoise, torch.cat([x, x]), t, Conditioning.cat([weak_cond, cond]),
                              omega=[omega] * n + [1.0] * n)
        weak, strong = out.chunk(2)
        return weak + self.strategy.scale * (strong - weak)


@dataclass(frozen=True)
class PersonalizationGuidance(WeakModelGuidance):
    """eps(x, negative; theta_w) + scale * (eps(x, c; theta_ft) - eps(x, negative; theta_w)); omega = 1 is CFG."""

    weak_reads: ClassVar[str] = "negative"


@dataclass(frozen=True)
class Autoguidance(WeakModelGuidance):
    """eps(x, c; theta_w) + scale * (eps(x, c; theta_ft) - eps(x, c; theta_w)): the weak model on the same prompt."""

    weak_reads: ClassVar[str] = "prompt"


def guidance_for(mode: str, scale: float, omega_start: float = 0.5, omega_end: float | None = None,
                 pretrained: Model | None = None) -> Guidance:
    """The strategy of one of GUIDANCE_MODES (omega is ignored by CFG)."""
    if mode == "cfg":
        return CFG(scale)
    if mode == "personalization":
        return PersonalizationGuidance(scale, omega_start, omega_end, pretrained)
    if mode == "autoguidance":
        return Autoguidance(scale, omega_start, omega_end, pretrained)
    raise InputError(f"guidance mode '{mode}' is not one of {', '.join(GUIDANCE_MODES)}.")
