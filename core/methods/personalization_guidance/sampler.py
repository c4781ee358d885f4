"""The sampler: a personalized model (a concept for the base, or a second model) sampled with one of the
three modes. The fine-tuned model is given as a concept (LoRA, full offsets or a token) for the base model,
or as a second model: the base with concepts applied, or a fine-tuned checkpoint of the same architecture."""

from __future__ import annotations

from ...concepts import Concept, apply_concept
from ...errors import InputError
from ...model import Model
from ...sampling import SampleResult, sample
from .guidance import guidance_for

DEFAULT_W, DEFAULT_OMEGA = 7.5, 0.5  # METHODS.md's defaults, until measured (README: bench suite `guidance`)


def personalized(model: Model, concept: Concept | None = None, finetuned: Model | None = None
                 ) -> tuple[Model, Model | None]:
    """(the model to sample, its pre-trained base where the weak model must be found by comparing weights)."""
    if concept is not None and finetuned is not None:
        raise InputError("give either a concept or a fine-tuned model, not both: the fine-tuned model is the base "
                         "model with the concept, or a fine-tuned checkpoint.")
    if concept is not None:
        return apply_concept(model, concept), None
    if finetuned is None:
        return model, None
    if finetuned.unet is model.unet:  # the base with concepts applied: the concepts are the personalization
        return finetuned, None
    if finetuned.patches:
        raise InputError("the fine-tuned model has concepts applied on top of another model; connect its base model "
                         "and the concept instead, or a fine-tuned checkpoint without concepts.")
    return finetuned, model


def personalization_sample(
    model: Model,
    prompt: str | list[str],
    *,
    concept: Concept | None = None,
    finetuned: Model | None = None,
    mode: str = "personalization",
    w: float = DEFAULT_W,
    omega_start: float = DEFAULT_OMEGA,
    omega_end: float | None = None,
    **sample_options,
) -> SampleResult:
    """Sample the personalized model with one of GUIDANCE_MODES; omega may go linearly from `omega_start` to
    `omega_end` over the steps. `sample_options` are `sample`'s (negative_prompt, seed, steps, ...)."""
    tuned, pretrained = personalized(model, concept, finetuned)
    return sample(tuned, prompt, guidance=guidance_for(mode, w, omega_start, omega_end, pretrained), **sample_options)
