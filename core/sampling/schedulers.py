"""The samplers users pick, as diffusers schedulers built from the model's own noise schedule."""

from __future__ import annotations

from ..errors import InputError

SAMPLERS = {  # name -> (diffusers scheduler class, overrides); diffusers is imported on first use
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
}
SAMPLER_NAMES = list(SAMPLERS)


def make_scheduler(scheduler_config: dict, sampler: str):
    """A fresh scheduler (schedulers keep per-run state) for the named sampler."""
    if sampler not in SAMPLERS:
        raise InputError(f"sampler '{sampler}' is not one of {', '.join(SAMPLERS)}.")
    class_name, overrides = SAMPLERS[sampler]
    import diffusers

    cls = getattr(diffusers, class_name)
    config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    return cls.from_config({**config, **overrides})
