"""Loss terms of the training loop, beside its objective.

A term is called once per step with the run (model, trainable set, the teacher) and that step's generator, and
returns a scalar to add to the loss; a term that is a denoising loss on other images rides the objective's pass
instead (`ride`, objective.Rider). Methods bring their own
terms (distillation); image replay (prior preservation) and the parameter-offset penalty are here because several
recipes and methods use them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from ..errors import InputError
from .data import FewShotImages
from .objective import DenoisingObjective, Noised, Rider, Run, ride_alone

OFFSET_NORMS = ("frobenius", "spectral")


class LossTerm(Protocol):
    name: str

    def __call__(self, run: Run, step: int, generator: torch.Generator) -> torch.Tensor: ...


@dataclass
class ImageReplay:
    """The denoising loss on fixed images with their captions, weighted: DreamBooth's prior preservation (class
    images the base model made for class prompts, generated once and cached by the caller) and a memory's replay
    of earlier concepts' samples are this one loss under two names. With `masks` the loss counts only where each
    image's mask is set (a memory's pair composites: the new concept's half); with `masks` and `teacher_weight`,
    outside each mask the prediction is held to the model's before the run (the run's teacher, on the same noised
    image and caption): what the rest of the image shows keeps being drawn as the run's starting model drew it."""

    images: torch.Tensor  # [M, 3, H, W] in -1..1
    captions: list[str]
    weight: float = 1.0
    name: str = "prior_preservation"
    masks: torch.Tensor | None = None  # [M, 1, h, w] in latent pixels, 1 where the loss counts; None: everywhere
    count: int = 0  # images drawn per step; 0: the run's batch size
    teacher_weight: float = 0.0  # with masks: the weight of matching the teacher outside them (0: off)
    _source: FewShotImages | None = field(default=None, repr=False)  # the images, their latents encoded once

    def __post_init__(self):
        if len(self.images) == 0 or len(self.images) != len(self.captions):
            raise InputError(f"{self.name.replace('_', ' ')} needs images, one caption each.")
        if self.masks is not None and len(self.masks) != len(self.images):
            raise InputError(f"{self.name.replace('_', ' ')} needs one mask per image.")
        if self.teacher_weight and self.masks is None:
            raise InputError(f"{self.name.replace('_', ' ')} holds the teacher outside its masks: give masks.")
        self._source = FewShotImages(self.images, self.captions)

    def draw(self, run, count: int, generator) -> tuple[torch.Tensor, Noised]:
        """`count` of the images, drawn with replacement, and their noised latents (the latents encoded once)."""
        pick = torch.randint(0, len(self.images), (count,), generator=generator)
        posterior = self._source.posterior(run.model).select(pick)
        return pick, DenoisingObjective().noising_posterior(run, posterior, generator)

    def ride(self, run, step, generator) -> Rider:
        pick, noised = self.draw(run, self.count or run.batch_size, generator)
        mask = None if self.masks is None else self.masks[pick].to(run.model.device)

        def loss(prediction: torch.Tensor, held: torch.Tensor | None = None) -> torch.Tensor:
            if mask is None:
                return self.weight * F.mse_loss(prediction, noised.target.float())
            total = self.weight * _masked_mse(prediction, noised.target.float(), mask)
            if held is not None:
                total = total + self.teacher_weight * _masked_mse(prediction, held, 1 - mask)
            return total

        return Rider(noised, [self.captions[i] for i in pick], loss, taught=bool(self.teacher_weight))

    def __call__(self, run, step, generator):
        return ride_alone(run, self.ride(run, step, generator))


def _masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean squared error where `mask` [B, 1, h, w] is set (0 where it is set nowhere)."""
    error = (prediction.float() - target).pow(2) * mask
    return error.sum() / (mask.sum().clamp(min=1) * prediction.shape[1])


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
