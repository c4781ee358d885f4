"""Loss terms of the training loop, beside its objective.

A term is called once per step with the run (model, trainable set, the denoising-loss function, the
teacher) and that step's generator, and returns a scalar to add to the loss. Methods bring their own
terms (replay, distillation); prior preservation and the parameter-offset penalty are here because several
recipes and methods use them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from ..errors import InputError

if TYPE_CHECKING:
    from .fewshot import TrainingRun

OFFSET_NORMS = ("frobenius", "spectral")


class LossTerm(Protocol):
    name: str

    def __call__(self, run: TrainingRun, step: int, generator: torch.Generator) -> torch.Tensor: ...


@dataclass
class PriorPreservation:
    """DreamBooth's prior-preservation loss: the denoising loss on class images the base model made for
    class prompts (generated once and cached by the caller), weighted by `weight`."""

    class_images: torch.Tensor  # [M, 3, H, W] in -1..1
    class_captions: list[str]
    weight: float = 1.0
    name: str = "prior_preservation"

    def __post_init__(self):
        if len(self.class_images) == 0 or len(self.class_images) != len(self.class_captions):
            raise InputError("prior preservation needs class images, one caption each.")

    def __call__(self, run, step, generator):
        pick = torch.randint(0, len(self.class_images), (run.config.batch_size,), generator=generator)
        return self.weight * run.denoising_loss(self.class_images[pick], [self.class_captions[i] for i in pick],
                                                generator)


@dataclass
class OffsetPenalty:
    """A parameter-offset penalty: lambda * sum over the trained layers of ||theta_l - theta0_l||^2, the
    Frobenius norm by default, or the layer's spectral norm (its Lipschitz constant as a linear map, by power
    iteration) squared. For LoRA the offset is the effective weight delta up @ down * alpha / r. It bounds how
    far a run can move the model it starts from."""

    weight: float = 1e-2  # lambda
    norm: str = "frobenius"
    power_iterations: int = 1
    name: str = "offset_penalty"
    _vectors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.norm not in OFFSET_NORMS:
            raise InputError(f"norm '{self.norm}' is not one of {', '.join(OFFSET_NORMS)}.")
        if not self.weight >= 0:
            raise InputError(f"lambda must be zero or positive (got {self.weight}).")

    def __call__(self, run, step, generator):
        offsets = run.trainable.offsets()
        if not offsets:
            return torch.zeros(())
        if self.norm == "frobenius":
            total = sum(offset.frobenius_sq() for offset in offsets.values())
        else:
            total = sum(self._spectral_sq(name, offset, generator) for name, offset in offsets.items())
        return self.weight * total

    def _spectral_sq(self, name, offset, generator) -> torch.Tensor:
        with torch.no_grad():
            v = self._vectors.get(name)
            iterations = self.power_iterations
            if v is None:
                v = torch.randn(offset.in_features, generator=generator).to(offset.reference.detach())
                iterations = max(iterations, 10)
            for _ in range(iterations):
                u = offset.matvec(v)
                u = u / (u.norm() + 1e-12)
                v = offset.rmatvec(u)
                v = v / (v.norm() + 1e-12)
            self._vectors[name] = v
        sigma = (offset.matvec(v)).norm()  # = u . (delta v) at the fixed point; differentiable in delta
        return sigma**2
