"""Generating from an SGE set by conditional relaxing (METHODS.md §2): noise a target to the window's top,
then denoise; inside the window every call takes a random stored SGE row (a fresh draw per call, not tied to
the noised target) plus annealed noise, added outside the scale as the official cond_fn returns s * G + noise:
    eps_hat = eps(x_t, c) - sqrt(1 - abar_t) * (s * G[r, k] + a * (idx - start) / (end - start) * N(0, I)),
idx counting steps from the clean end. Outside the window: plain eps. Every random draw of image i comes
from its own generator, so one seed gives one image whatever the batch size (the official draws its batch's
rows as a permutation at each step, so within a step no two images share a row; one image's draws are
uniform either way). The start noise is fresh per image, as main.sh's `--random_q_noise True`; a set inverted
with fixed noise starts from that noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import InputError
from ...model import Model
from ...sampling import Guidance, SamplingContext, sample
from .inversion import eps_of, fixed_q_noise, output_of, prediction
from .sge import SGESet

DEFAULT_RELAX = 0.05  # a, the official value


@dataclass(frozen=True)
class RelaxedSGE(Guidance):
    """The guidance strategy of SGE sampling."""

    sge: SGESet
    relax: float = DEFAULT_RELAX

    def setup(self, context: SamplingContext) -> Guidance:
        self.sge.check_fits(context.model)
        return _RelaxedSteps(self, context.model)


@dataclass
class _RelaxedSteps(Guidance):
    strategy: RelaxedSGE
    model: Model

    def __call__(self, denoise, x, t, cond, uncond, step):
        sge = self.strategy.sge
        output = prediction(denoise, x, t, cond, uncond, sge.cfg)
        segment = sge.window.segment_at(step.index)
        if segment is None:
            return output
        alpha_bar = step.alpha_bar.to(x.device, torch.float32)
        eps = eps_of(output.float(), x.float(), alpha_bar, self.model.prediction_type)
        from_clean = step.total - 1 - step.index
        anneal = self.strategy.relax * (from_clean - sge.window.start) / (sge.window.end - sge.window.start)
        rows = []
        for generator in step.generators:  # image i's own draws
            r = int(torch.randint(0, sge.count, (1,), generator=generator))
            noise = torch.randn(sge.sge.shape[2:], generator=generator)
            rows.append(sge.scale * sge.sge[r, segment] + anneal * noise)
        g = torch.stack(rows).to(eps)
        eps_hat = eps - (1 - alpha_bar).sqrt() * g
        return output_of(eps_hat, x.float(), alpha_bar, self.model.prediction_type).to(output.dtype)


def sample_sge(model: Model, sge: SGESet, count: int = 4, seed: int = 0, relax: float = DEFAULT_RELAX,
               progress=None, cancel=None, decode: bool = True):
    """`count` new images of the SGE set's domain (image i from seed + i: its target, noise and SGE draws)."""
    if count < 1:
        raise InputError(f"count must be at least 1 (got {count}).")
    sge.check_fits(model)
    picks = [int(torch.randint(0, sge.count, (1,), generator=torch.Generator().manual_seed((seed + i) % 2**64 ^ 0x5CE)))
             for i in range(count)]
    init = sge.targets[picks].to(model.device, model.dtype)
    fixed = fixed_q_noise(sge.targets.shape)[picks] if sge.parameters.get("q_noise", "fixed") == "fixed" else None
    return sample(model, sge.prompt, batch_size=count, seed=seed, steps=sge.window.steps,
                  start_step=sge.window.first_loop_index, init_latents=init, init_noise=fixed,
                  guidance=RelaxedSGE(sge, relax),
                  progress=progress, cancel=cancel, decode=decode)
