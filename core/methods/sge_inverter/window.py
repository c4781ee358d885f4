"""The guidance window on a model's own schedule (METHODS.md §2).

The official window is DDIM steps [5, 20) of 25 on a pixel DDPM (linear betas 1e-4..0.02, 1000 steps),
counted from the clean end: with guided-diffusion's respacing the SGEs act between t = 208 and t = 791, and
generation starts from a target noised to t = 791, where sqrt(alpha-bar) is about 0.04. A latent model's schedule
keeps much more signal at the same step (the world's scaled-linear one: about 0.2 there), so the window can be
carried over
- "step": by step index, scaled to the run's step count (the same share of the schedule), or
- "noise": by noise level, the steps whose sqrt(alpha-bar) is nearest the official window's bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import InputError

OFFICIAL_STEPS = 25
OFFICIAL_WINDOW = (5, 20)  # DDIM steps counted from the clean end, end excluded
OFFICIAL_TRAIN_STEPS = 1000
MAPPINGS = ("step", "noise")


def official_timestep(index: int) -> int:
    """The training timestep of DDIM step `index` (from the clean end) of the official 25: guided-diffusion's
    respacing takes round(index * 999 / 24) (step 5: t = 208, step 19: t = 791)."""
    return round(index * (OFFICIAL_TRAIN_STEPS - 1) / (OFFICIAL_STEPS - 1))


def official_signal(index: int) -> float:
    """sqrt(alpha-bar) of the official schedule at DDIM step `index` (counted from the clean end) of 25."""
    betas = torch.linspace(1e-4, 0.02, OFFICIAL_TRAIN_STEPS, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    return float(alpha_bar[official_timestep(index)].sqrt())


@dataclass(frozen=True)
class Window:
    """Steps [start, end) of a `steps`-step DDIM schedule, counted from the clean end (0 = the last step)."""

    steps: int
    start: int
    end: int

    def __post_init__(self):
        if not 0 <= self.start < self.end <= self.steps:
            raise InputError(f"the guidance window [{self.start}, {self.end}) does not fit {self.steps} steps; give "
                             f"0 <= start < end <= steps.")

    segment_count: int = 0  # 0: one segment per step (METHODS.md); the official config uses 1

    @property
    def segments(self) -> int:
        return self.segment_count or self.end - self.start

    def segment_steps(self, segment: int) -> tuple[int, int]:
        """Steps [first, last) from the clean end that segment `segment` (0 = the noisiest) covers."""
        bounds = [self.start + round(i * (self.end - self.start) / self.segments) for i in range(self.segments + 1)]
        k = self.segments - 1 - segment
        return bounds[k], bounds[k + 1]

    def segment_at(self, loop_index: int) -> int | None:
        """The segment (0 = the noisiest) of the sampling loop's step `loop_index` (0 = the noisiest step)."""
        from_clean = self.steps - 1 - loop_index
        for segment in range(self.segments):
            first, last = self.segment_steps(segment)
            if first <= from_clean < last:
                return segment
        return None

    @property
    def first_loop_index(self) -> int:
        """Where generation starts: the window's top (a target noised to that step)."""
        return self.steps - self.end


def map_window(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, mapping: str,
               window: tuple[int, int] = OFFICIAL_WINDOW, official_steps: int = OFFICIAL_STEPS) -> Window:
    """The window on a schedule whose DDIM timesteps (noisiest first) are `timesteps`."""
    steps = len(timesteps)
    if mapping == "step":
        start = round(window[0] * steps / official_steps)
        end = max(start + 1, round(window[1] * steps / official_steps))
        return Window(steps, start, min(end, steps))
    if mapping == "noise":
        clean_first = timesteps.flip(0).long().clamp(0, len(alphas_cumprod) - 1)
        signal = alphas_cumprod[clean_first].double().sqrt()

        def nearest(index: int) -> int:
            return int((signal - official_signal(index)).abs().argmin())

        start, top = nearest(window[0]), nearest(window[1] - 1)
        return Window(steps, start, max(top + 1, start + 1))
    raise InputError(f"window mapping '{mapping}' is not one of {', '.join(MAPPINGS)}.")
