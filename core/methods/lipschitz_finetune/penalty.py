"""Lipschitz Finetune's parameter-offset penalty (METHODS.md §4), a loss term of the training service."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...errors import InputError

NORMS = ("frobenius", "spectral")


@dataclass
class LipschitzPenalty:
    """Lipschitz Finetune's parameter-offset penalty (METHODS.md §4):
    lambda * sum over layers of ||theta_l - theta0_l||^2, the Frobenius norm by default, or the layer's
    spectral norm (its Lipschitz constant as a linear map, by power iteration) squared. For LoRA the
    offset is the effective weight delta up @ down * alpha / r."""

    weight: float = 1e-2  # lambda
    norm: str = "frobenius"
    power_iterations: int = 1
    name: str = "lipschitz_penalty"
    _vectors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.norm not in NORMS:
            raise InputError(f"norm '{self.norm}' is not one of {', '.join(NORMS)}.")
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


