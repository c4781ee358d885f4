"""The other extension points of the sampling loop, with their do-nothing defaults.

- Each step's (cond, uncond): the prompts encoded once (`StaticConditioning`); when the model's patches have
  step hooks (token vectors computed from the current latents, as an image encoder's), `StepConditioning`
  runs the hooks and encodes the prompt again at every step.
- An attention controller is attached to the UNet for the run and may adjust the latents before a
  step (Attend-and-Excite style updates of the Concept Memory's artist). `AttentionStore` is one that
  records the cross-attention maps of chosen tokens: the default attention processor never forms them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..model import Conditioning, Denoise
from .guidance import Step


@dataclass
class StaticConditioning:
    cond: Conditioning
    uncond: Conditioning

    def __call__(self, step: Step, latents: torch.Tensor) -> tuple[Conditioning, Conditioning]:
        return self.cond, self.uncond


@dataclass
class StepConditioning:
    """Runs the patches' step hooks on each step's model input, then encodes the prompt (and the negative
    prompt, where it names a changed trigger) with the vectors they served."""

    static: StaticConditioning
    patches: object  # PatchState
    scheduler: object
    denoise: Denoise
    encode: object  # encode("prompt" | "negative") -> Conditioning
    negative_changes: bool

    def __call__(self, step: Step, latents: torch.Tensor) -> tuple[Conditioning, Conditioning]:
        with torch.no_grad():
            model_input = self.scheduler.scale_model_input(latents, step.timestep)
            for hook in self.patches.step_hooks:
                hook.before_step(step, model_input, self.static.uncond, self.denoise)
            uncond = self.encode("negative") if self.negative_changes else self.static.uncond
            return self.encode("prompt"), uncond


class AttentionController:
    """Base class: attach/detach hooks on the UNet, and optionally adjust latents before each step. `begin` is
    told the run's model and prompts first (a controller that acts on named words finds their tokens)."""

    def begin(self, model, prompts: list[str]) -> None:
        pass

    def attach(self, unet: torch.nn.Module) -> None:
        pass

    def detach(self, unet: torch.nn.Module) -> None:
        pass

    def before_step(
        self, step: Step, latents: torch.Tensor, denoise: Denoise, cond: Conditioning
    ) -> torch.Tensor:
        return latents


class RecordingAttention(AttentionController):
    """Base of the controllers that read cross-attention maps: `attach` wraps every cross-attention processor so
    that, while `recording` is true, `record(layer, probs)` gets the layer's map (`attention_map`, with gradients
    if the pass has them); `detach` puts the processors back. Subclasses declare `recording` and `_originals`."""

    recording: bool
    _originals: dict | None

    def attach(self, unet):
        self._originals = dict(unet.attn_processors)
        unet.set_attn_processor({name: _RecordingProcessor(self, name, p) if name.endswith("attn2.processor") else p
                                 for name, p in self._originals.items()})

    def detach(self, unet):
        if self._originals is not None:
            unet.set_attn_processor(self._originals)
            self._originals = None
        self.recording = False

    def record(self, layer: str, probs: torch.Tensor) -> None:
        raise NotImplementedError


class _RecordingProcessor:
    """Runs the layer's own processor, and while its owner records, the softmax map of the layer's queries
    over the prompt's tokens, softmax(q k^T / sqrt(d)) averaged over heads: [batch, pixels, tokens]."""

    def __init__(self, owner: RecordingAttention, name: str, original):
        self.owner, self.name, self.original = owner, name, original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if self.owner.recording and encoder_hidden_states is not None:
            self.owner.record(self.name, attention_map(attn, hidden_states, encoder_hidden_states, temb))
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


def attention_map(attn, hidden_states, context, temb) -> torch.Tensor:
    """The softmax map of an attention layer's queries over the context tokens, averaged over heads:
    [batch, pixels, tokens] (what a cross-attention layer of `attn` computes, formed explicitly)."""
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    if hidden_states.ndim == 4:
        b, c, h, w = hidden_states.shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query = attn.head_to_batch_dim(attn.to_q(hidden_states))
    key = attn.head_to_batch_dim(attn.to_k(context))
    probs = attn.get_attention_scores(query, key, None)  # [batch * heads, pixels, tokens]
    return probs.reshape(-1, attn.heads, *probs.shape[1:]).mean(dim=1)


@dataclass
class AttentionStore(RecordingAttention):
    """Records the cross-attention maps of `tokens` (positions in the prompt; None: all) at the steps in
    `steps` (None: every step): `maps[step][layer]` is [batch, pixels, tokens] (CFG's batch is
    [unconditional, conditional]); each map sums to 1 over all the prompt's tokens."""

    tokens: Sequence[int] | None = None
    steps: Sequence[int] | None = None
    maps: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    recording: bool = False
    _step: int = 0
    _originals: dict | None = None

    def before_step(self, step, latents, denoise, cond):
        self._step = step.index
        self.recording = self.steps is None or step.index in self.steps
        return latents

    def record(self, layer: str, probs: torch.Tensor) -> None:
        chosen = probs if self.tokens is None else probs[..., list(self.tokens)]
        self.maps.setdefault(self._step, {})[layer.removesuffix(".processor")] = chosen.detach()


@dataclass
class ChainedAttention(AttentionController):
    """Several controllers in turn (the caller's, then those the model's patches added)."""

    controllers: Sequence[AttentionController]

    def begin(self, model, prompts):
        for controller in self.controllers:
            controller.begin(model, prompts)

    def attach(self, unet):
        for controller in self.controllers:
            controller.attach(unet)

    def detach(self, unet):
        for controller in reversed(self.controllers):
            controller.detach(unet)

    def before_step(self, step, latents, denoise, cond):
        for controller in self.controllers:
            latents = controller.before_step(step, latents, denoise, cond)
        return latents
