"""The concept attention artist (METHODS.md §5): at sampling time, in the early steps, the latents are moved
along the gradient of a loss on the cross-attention maps of the memory's concept tokens (Attend-and-Excite
style), so that no concept goes missing and two concepts do not blend:
- dynamic attend: max over the prompt's concept tokens of (1 - the token's highest attention anywhere);
- unmix: for every pair of concepts in the prompt, the overlap of their maps (each normalized to sum 1:
  sum of the pointwise minimum, 0 = apart, 1 = the same map);
- a personal token's map kept distinct from its class word's (the cosine of the two maps).
Maps: the conditional pass's cross-attention at the UNet's middle resolution (half the latent's side), over
the prompt's tokens without the start token, sharpened (x100) and softmaxed over tokens, as Attend-and-Excite.
The step is `step_size` x (1 - the share of the active steps done / 2); a prompt without concept tokens is left
alone. One UNet pass with gradients per active step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...model import Conditioning, Model
from ...model.inference_mode import leave_inference_mode
from ...sampling import RecordingAttention

DEFAULT_ACTIVE_SHARE = 0.25  # of the steps, from the first
DEFAULT_STEP_SIZE = 20.0


@dataclass
class ConceptAttentionArtist(RecordingAttention):
    concepts: tuple[tuple[str, str], ...]  # (trigger, class word)
    active_share: float = DEFAULT_ACTIVE_SHARE
    step_size: float = DEFAULT_STEP_SIZE
    attend_weight: float = 1.0
    unmix_weight: float = 1.0
    distinct_weight: float = 0.1
    _model: Model | None = None
    _positions: list[list[tuple[int, int | None]]] = field(default_factory=list)  # per prompt: (trigger, class) pos
    _lengths: list[int] = field(default_factory=list)
    _originals: dict | None = None
    recording: bool = False
    _maps: dict[str, torch.Tensor] = field(default_factory=dict)
    last_losses: list[float] = field(default_factory=list)

    def begin(self, model, prompts):
        self._model = model
        tokenizer = model.tokenizers[0]
        self._positions, self._lengths = [], []
        for prompt in prompts:
            ids = tokenizer(prompt).input_ids
            found = []
            for trigger, class_word in self.concepts:
                token = tokenizer.convert_tokens_to_ids(trigger)
                if token in ids:
                    at = ids.index(token)
                    class_ids = tokenizer(class_word, add_special_tokens=False).input_ids
                    follows = at + 1 < len(ids) and class_ids and ids[at + 1] == class_ids[0]
                    found.append((at, at + 1 if follows else None))
            self._positions.append(found)
            self._lengths.append(len(ids) - 1)  # without the end token
        self.last_losses = []

    def attach(self, unet):
        if not any(self._positions):
            return
        with torch.inference_mode(False):  # once per run: the gradient passes need ordinary weights
            leave_inference_mode(self._model)
        super().attach(unet)

    def before_step(self, step, latents, denoise, cond):
        active = max(1, round(self.active_share * step.total))
        if self._originals is None or step.index >= active:
            return latents
        with torch.inference_mode(False), torch.enable_grad():
            x = latents.detach().clone().requires_grad_(True)
            # the prompts' states, made under ComfyUI's inference mode, are inference tensors: no gradient passes them
            cond = Conditioning(cond.hidden.clone(), None if cond.pooled is None else cond.pooled.clone())
            self.recording = True
            try:
                denoise(x, step.timestep, cond)
                loss = self._loss(x.shape[-2:])
            finally:
                self.recording = False
                self._maps = {}
            if loss is None:
                return latents
            (grad,) = torch.autograd.grad(loss, x)
        self.last_losses.append(float(loss.detach()))
        size = self.step_size * (1 - 0.5 * step.index / active)
        return (latents - size * grad.to(latents)).detach()

    def record(self, layer: str, probs: torch.Tensor) -> None:
        self._maps[layer] = probs

    def _loss(self, latent_size) -> torch.Tensor | None:
        side = (latent_size[0] // 2) * (latent_size[1] // 2)
        chosen = [m for m in self._maps.values() if m.shape[1] == side] or list(self._maps.values())
        pixels = chosen[0].shape[1]
        probs = torch.stack([m for m in chosen if m.shape[1] == pixels]).mean(0)  # [B, pixels, tokens]
        total = []
        for b, found in enumerate(self._positions):
            if not found:
                continue
            text = probs[b, :, 1:self._lengths[b]] * 100
            maps = text.softmax(-1)  # over the prompt's tokens without the start token
            token_map = {p: maps[:, p - 1] for pair in found for p in pair if p is not None}
            triggers = [token_map[t] for t, _ in found]
            attend = torch.stack([1 - m.max() for m in triggers]).max()
            loss = self.attend_weight * attend
            if len(triggers) > 1:
                normed = [m / m.sum().clamp_min(1e-8) for m in triggers]
                overlaps = [torch.minimum(normed[i], normed[j]).sum()
                            for i in range(len(normed)) for j in range(i + 1, len(normed))]
                loss = loss + self.unmix_weight * torch.stack(overlaps).mean()
            distinct = [F.cosine_similarity(token_map[t], token_map[c], dim=0) for t, c in found if c is not None]
            if distinct:
                loss = loss + self.distinct_weight * torch.stack(distinct).mean()
            total.append(loss)
        return torch.stack(total).sum() if total else None

