"""Guidance strategies: how the noise predictions of one step are combined.

A strategy gets `passes` (UNet evaluations of a batch, on the fine-tuned weights or, per sample, on the
weak model at some omega), the scaled latents, the timestep and both conditionings, and returns the
guided model output. It owns how many UNet evaluations a step costs.

All three strategies of the Personalization Guidance Sampler (METHODS.md §3) are one formula,
`weak + w * (strong - weak)` with `strong = eps(x, c; theta_ft)`, and differ only in the weak branch:
- CFG: eps(x, negative; theta_ft);
- personalization guidance: eps(x, negative; theta_w), theta_w = theta_pre + omega (theta_ft - theta_pre);
- autoguidance (Karras et al. 2024): eps(x, c; theta_w).
Both branches go through one UNet batch (two evaluations per step, as CFG), except for full weight offsets,
which take one pass per omega.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from ..concepts.weak_model import WeakModel
from ..errors import InputError
from .conditioning import Conditioning

Denoise = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]
GUIDANCE_MODES = ("personalization", "cfg", "autoguidance")


@dataclass(frozen=True)
class Step:
    index: int  # 0-based position in the schedule
    total: int
    timestep: torch.Tensor


class Passes:
    """UNet evaluations for one sampling run: `passes(x, t, cond)` on the fine-tuned weights, or with
    `omega=[...]` (one value per sample) on the weak model; `weak_conditioning` encodes the weak model's
    prompt where its text encoders differ from the fine-tuned ones."""

    def __init__(self, denoise: Denoise, weak: WeakModel, encode: Callable[[str], Conditioning] | None):
        self.denoise, self.weak, self.encode = denoise, weak, encode
        self._encoded: dict[tuple[str, float], Conditioning] = {}

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                 omega: Sequence[float] | None = None) -> torch.Tensor:
        if omega is None:
            return self.denoise(x, t, cond)
        omega = [float(o) for o in omega]
        if self.weak.per_sample or len(set(omega)) == 1:
            with self.weak.at(omega):
                return self.denoise(x, t, cond)
        outputs = {}
        for value in dict.fromkeys(omega):  # full weight offsets: one pass per omega, with the weights swapped
            index = torch.tensor([i for i, o in enumerate(omega) if o == value], device=x.device)
            part = Conditioning(cond.hidden[index], None if cond.pooled is None else cond.pooled[index])
            with self.weak.at(value):
                outputs[value] = (index, self.denoise(x[index], t, part))
        first = next(iter(outputs.values()))[1]
        out = first.new_empty((len(omega), *first.shape[1:]))
        for index, value in outputs.values():
            out[index] = value
        return out

    def weak_conditioning(self, reads: str, omega: float, given: Conditioning) -> Conditioning:
        """The weak branch's conditioning of `reads` ('prompt' or 'negative'); `given` is the fine-tuned one."""
        if omega == 1.0 or not self.weak.changes_text:
            return given
        if self.encode is None:
            raise InputError("this conditioning provider cannot encode the weak model's prompt; use weak-model "
                             "guidance with concepts that leave the text encoders unchanged.")
        key = (reads, omega)
        if key not in self._encoded:
            with self.weak.at(omega):
                self._encoded[key] = self.encode(reads)
        return self._encoded[key]


class Guidance(Protocol):
    uses_weak_model: ClassVar[bool]

    def __call__(
        self, passes: Passes, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, uncond: Conditioning, step: Step
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class CFG:
    """Classifier-free guidance: uncond + scale * (cond - uncond), both branches in one UNet batch."""

    scale: float = 7.5
    uses_weak_model: ClassVar[bool] = False

    def __call__(self, passes, x, t, cond, uncond, step):
        if self.scale == 1.0:
            return passes(x, t, cond)
        out = passes(torch.cat([x, x]), t, Conditioning.cat([uncond, cond]))
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + self.scale * (out_cond - out_uncond)


@dataclass(frozen=True)
class WeakModelGuidance:
    """weak + scale * (strong - weak), the weak branch on theta_w at omega: constant (`omega_end` None) or
    linear from `omega_start` at the first step to `omega_end` at the last."""

    scale: float = 7.5
    omega_start: float = 0.5
    omega_end: float | None = None
    weak_reads: ClassVar[str] = "negative"  # which prompt the weak branch reads
    uses_weak_model: ClassVar[bool] = True

    def __post_init__(self):
        for name in ("scale", "omega_start", "omega_end"):
            value = getattr(self, name)
            if value is not None and not torch.isfinite(torch.tensor(float(value))):
                raise InputError(f"{name} must be a number (got {value}).")

    def omega(self, step: Step) -> float:
        if self.omega_end is None or step.total == 1:
            return float(self.omega_start)
        return float(self.omega_start + (self.omega_end - self.omega_start) * step.index / (step.total - 1))

    def __call__(self, passes, x, t, cond, uncond, step):
        omega = self.omega(step)
        weak_cond = passes.weak_conditioning(self.weak_reads, omega, cond if self.weak_reads == "prompt" else uncond)
        n = x.shape[0]
        out = passes(torch.cat([x, x]), t, Conditioning.cat([weak_cond, cond]), omega=[omega] * n + [1.0] * n)
        weak, strong = out.chunk(2)
        return weak + self.scale * (strong - weak)


@dataclass(frozen=True)
class PersonalizationGuidance(WeakModelGuidance):
    """eps(x, negative; theta_w) + scale * (eps(x, c; theta_ft) - eps(x, negative; theta_w)); omega = 1 is CFG."""

    weak_reads: ClassVar[str] = "negative"


@dataclass(frozen=True)
class Autoguidance(WeakModelGuidance):
    """eps(x, c; theta_w) + scale * (eps(x, c; theta_ft) - eps(x, c; theta_w)): the weak model on the same prompt."""

    weak_reads: ClassVar[str] = "prompt"


def guidance_for(mode: str, scale: float, omega_start: float = 0.5, omega_end: float | None = None) -> Guidance:
    """The strategy of one of GUIDANCE_MODES (omega is ignored by CFG)."""
    if mode == "cfg":
        return CFG(scale)
    if mode == "personalization":
        return PersonalizationGuidance(scale, omega_start, omega_end)
    if mode == "autoguidance":
        return Autoguidance(scale, omega_start, omega_end)
    raise InputError(f"guidance mode '{mode}' is not one of {', '.join(GUIDANCE_MODES)}.")
