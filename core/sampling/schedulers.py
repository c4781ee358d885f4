"""The samplers users pick, as diffusers schedulers built from the model's own noise schedule."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)

from ..errors import InputError

SAMPLERS = {
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
}
SAMPLER_NAMES = list(SAMPLERS)


def make_scheduler(scheduler_config: dict, sampler: str):
    """A fresh scheduler (schedulers keep per-run state) for the named sampler."""
    if sampler not in SAMPLERS:
        raise InputError(f"sampler '{sampler}' is not one of {', '.join(SAMPLERS)}.")
    cls, overrides = SAMPLERS[sampler]
    config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    return cls.from_config({**config, **overrides})
