"""The weak model of personalization guidance (METHODS.md §3): theta_w = theta_pre + omega * (theta_ft - theta_pre).

`WeakModel` switches a patched model between its fine-tuned weights (omega = 1) and the interpolation
toward its pre-trained weights (omega = 0 is the base model), without a copy of the UNet:
- LoRA patches: the same hooks at scale omega. The scale may differ per sample of a batch, so the weak
  and the fine-tuned branch of a step share one UNet batch, as CFG's two branches do.
- Full weight offsets (a full or attention fine-tune, or a fine-tuned checkpoint against its base):
  theta_w is materialized once into one buffer per changed weight (re-filled only when omega changes);
  the parameters point at the buffer or at the fine-tuned tensor, one pass per omega.
- Token vectors: the base model has no vector for a trigger, so its pre-trained value is taken to be
  the class word's vector (what training starts from). The weak token is the interpolation between the
  class word and the learned vector: "a creature" at omega 0, the learned subject at omega 1. It only
  matters where the weak branch reads the trigger (autoguidance, or a negative prompt naming it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ...errors import InputError
from ...model import Model, PatchState
from ...model.patches import LoraHook, TokenRow


@dataclass
class DenseWeights:
    """One parameter whose fine-tuned value `tuned` differs from its pre-trained value `pre`."""

    param: torch.nn.Parameter
    pre: torch.Tensor
    tuned: torch.Tensor
    text: bool  # a text-encoder weight
    buffer: torch.Tensor | None = None
    buffer_omega: float | None = None

    def weak(self, omega: float) -> torch.Tensor:
        if self.buffer is None:
            self.buffer = torch.empty_like(self.tuned)
        if self.buffer_omega != omega:
            torch.lerp(self.pre, self.tuned, omega, out=self.buffer)
            self.buffer_omega = omega
        return self.buffer


@dataclass
class WeakModel:
    lora_hooks: list[LoraHook] = field(default_factory=list)
    dense: list[DenseWeights] = field(default_factory=list)
    tokens: list[TokenRow] = field(default_factory=list)

    @staticmethod
    def of(patches: PatchState) -> WeakModel:
        """The weak model of what the patches in effect changed (an untrained token has nothing to unlearn)."""
        return WeakModel(list(patches.lora_hooks),
                         [DenseWeights(w.param, w.pre, w.tuned, w.text) for w in patches.weights],
                         [row for row in patches.tokens if not torch.equal(row.pre, row.tuned)])

    @property
    def empty(self) -> bool:
        """Nothing to interpolate: the weak model would be the fine-tuned one."""
        return not (self.lora_hooks or self.dense or self.tokens)

    @property
    def per_sample(self) -> bool:
        """Whether one batch can mix omegas (only LoRA scales change between samples)."""
        return not self.dense

    @property
    def changes_text(self) -> bool:
        """Whether the text encoders' output depends on omega (so weak conditioning is encoded apart)."""
        return bool(self.tokens) or any(h.text for h in self.lora_hooks) or any(d.text for d in self.dense)

    @contextmanager
    def at(self, omega: float | Sequence[float]):
        """Run the block on theta_w at `omega`: one value, or one per sample of the batch (LoRA only)."""
        values = [float(omega)] if isinstance(omega, int | float) else [float(o) for o in omega]
        if not all(math.isfinite(v) for v in values):
            raise InputError(f"omega must be a number (got {values}).")
        mixed = len(set(values)) > 1
        if mixed and not self.per_sample:
            raise InputError("full weight offsets take one omega per pass; split the batch by omega.")
        per_sample: dict[tuple, torch.Tensor] = {}  # one scale tensor per device and dtype of the hooks
        try:
            for hook in self.lora_hooks:
                hook.scale = values[0]
                if mixed:
                    where = (hook.down.device, hook.down.dtype)
                    if where not in per_sample:
                        per_sample[where] = torch.tensor(values, device=where[0], dtype=where[1])
                    hook.scale = per_sample[where]
            for weights in self.dense:
                weights.param.data = weights.weak(values[0])
            for token in self.tokens:
                token.rows[token.index] = torch.lerp(token.pre, token.tuned, values[0])
            yield
        finally:
            for hook in self.lora_hooks:
                hook.scale = 1.0
            for weights in self.dense:
                weights.param.data = weights.tuned
            for token in self.tokens:
                token.rows[token.index] = token.tuned


def checkpoint_difference(model: Model, pretrained: Model) -> list[DenseWeights]:
    """The parameters in which a fine-tuned checkpoint differs from its base model."""
    if pretrained.family != model.family:
        raise InputError(f"the base model is {pretrained.family}, the fine-tuned model {model.family}; connect the "
                         "base model the fine-tuned one was made from.")
    finetuned, pretrained = _parts(model), _parts(pretrained)
    if set(finetuned) != set(pretrained):
        raise InputError("the fine-tuned model and the base model have different parts (one is SDXL, the other "
                         "not?); connect the base model the fine-tuned one was made from.")
    changed = []
    for part, module in finetuned.items():
        base = dict(pretrained[part].named_parameters())
        for name, param in module.named_parameters():
            pre = base.get(name)
            if pre is None or pre.shape != param.shape:
                raise InputError(f"the fine-tuned model's {part} has a weight '{name}' of shape {tuple(param.shape)} "
                                 "that its base model does not have; connect the base model it was made from.")
            if not torch.equal(pre, param):
                changed.append(DenseWeights(param, pre.detach().to(param), param.data, text=part != "unet"))
    return changed


def _parts(model: Model) -> dict[str, torch.nn.Module]:
    return {"unet": model.unet, **{f"te{i}": encoder for i, encoder in enumerate(model.text_encoders)}}
