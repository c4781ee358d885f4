"""Applying concepts to a model without copying it.

`apply_concept` returns a new `Model` that shares every module with the base and carries the concept
as a patch (the model service's `add_patch`): its triggers become tokens, and while a sampler or trainer
has the patches in effect its token vectors, LoRA hooks and weight offsets change the model. So the same
base model can be used by other nodes at the same time it is used with a concept.
A method whose concepts hold tensors of their own (`group.{name}.*`) that change the model registers what
applying them does with `register_concept_group` (in the methods' table; e.g. a step hook that computes a
token's vector from the current latents); other groups are data the method keeps (a memory's bank) and are
carried along.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..model import Model, PatchState, add_patch
from ..model.patches import class_word_vector
from .concept import Concept

log = logging.getLogger("conceptkit.concepts")

GroupEnter = Callable[["Concept", Model, PatchState, float], None]  # (concept, model, state, strength)
_GROUPS: dict[str, GroupEnter] = {}


def register_concept_group(name: str, enter: GroupEnter) -> None:
    """What applying a concept's `group.{name}.*` tensors does, as a method defines it (the methods' table is
    installed when `conceptkit.core` loads)."""
    if name in _GROUPS and _GROUPS[name] is not enter:
        raise ValueError(f"a concept group '{name}' is already registered")
    _GROUPS[name] = enter


def group_enter(name: str) -> GroupEnter | None:
    """What applying group `name` does; None for a group that is data only (a memory's bank)."""
    return _GROUPS.get(name)


@dataclass(frozen=True)
class AppliedConcept:
    """A concept at a strength, as a patch of the model it is applied to."""

    concept: Concept
    strength: float = 1.0

    @property
    def triggers(self) -> tuple[str, ...]:
        return tuple(t.word for k, t in enumerate(self.concept.triggers) if self.concept.embeddings(k))

    def enter(self, model: Model, state: PatchState) -> None:
        concept = self.concept
        for k, trigger in enumerate(concept.triggers):
            vectors = [v.reshape(-1) for v in concept.embeddings(k)]
            if vectors:  # a trigger's pre-trained value is where its training started: its class word's vector, or
                # for a trigger that started as a rare word beside its class word, its own (None)
                pre = ([class_word_vector(model, i, trigger.class_word) for i in range(len(vectors))]
                       if concept.parameters.get("token_start", "class") == "class" else [None] * len(vectors))
                state.add_token(trigger.word, vectors, [None if p is None else p.to(v) for p, v in
                                                        zip(pre, vectors, strict=True)])
        for name, (down, up) in concept.lora_modules().items():
            state.add_lora(name, down, up, concept.lora_scale * self.strength)
        for name, delta in concept.deltas().items():
            state.add_offset(name, delta, self.strength)
        for name in concept.groups():
            if (enter := group_enter(name)) is not None:
                enter(concept, model, state, self.strength)


def applied_concepts(model: Model) -> list[AppliedConcept]:
    return [p for p in model.patches if isinstance(p, AppliedConcept)]


def check_concept_fits(model: Model, concept: Concept) -> None:
    if concept.family != model.family:
        raise InputError(
            f"{concept.describe()} cannot be applied to this {model.family} model: concepts only work on the model "
            f"family they were trained for. Load a {concept.family} model, or train the concept again on this one.")
    dims = [te.get_input_embeddings().weight.shape[1] for te in model.text_encoders]
    for k in range(len(concept.triggers)):
        got = [e.shape[-1] for e in concept.embeddings(k)]
        if got and got != dims:
            raise InputError(f"{concept.describe()} has token vectors of size {got}, this model's text encoders "
                             f"take {dims}; it was made for a different model.")
    broken = sorted(k for k, v in concept.tensors.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if broken:
        raise InputError(f"{concept.describe()} holds values that are not numbers (NaN or infinity) in {broken[0]}"
                         f"{f' and {len(broken) - 1} more' if len(broken) > 1 else ''}: it would draw black images. "
                         "It comes from a run that diverged, or the file is damaged; train it again.")
    if concept.base_fingerprint != model.fingerprint():
        log.warning("%s was trained on another %s model (fingerprint %s, this one %s); applying it anyway.",
                    concept.describe(), model.family, concept.base_fingerprint, model.fingerprint())


def apply_concept(model: Model, concept: Concept, strength: float = 1.0) -> Model:
    """The model with `concept` applied at `strength` (1.0 = as trained, 0 = off). The base is untouched."""
    check_concept_fits(model, concept)
    if not torch.isfinite(torch.tensor(strength)):
        raise InputError(f"strength must be a number (got {strength}).")
    return add_patch(model, AppliedConcept(concept, float(strength)))
