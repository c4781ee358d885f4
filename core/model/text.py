"""Text conditioning: prompts -> the embeddings the UNet reads (what sampling and training both need)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from .model import Model


@dataclass
class Conditioning:
    """What one batch of prompts gives the UNet: token embeddings, and the pooled embedding (SDXL)."""

    hidden: torch.Tensor  # [B, tokens, dim]
    pooled: torch.Tensor | None = None  # [B, dim] for SDXL

    def __len__(self) -> int:
        return self.hidden.shape[0]

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])
        return Conditioning(torch.cat([p.hidden for p in parts]), pooled)

    def select(self, index: torch.Tensor) -> Conditioning:
        return Conditioning(self.hidden[index], None if self.pooled is None else self.pooled[index])

    def zeros_like(self) -> Conditioning:
        return Conditioning(
            torch.zeros_like(self.hidden), None if self.pooled is None else torch.zeros_like(self.pooled)
        )


def tokenize(tokenizer, prompts: list[str], device: torch.device) -> torch.Tensor:
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return ids.to(device)


@torch.no_grad()
def encode_prompts(model: Model, prompts: list[str]) -> Conditioning:
    """Encode prompts the way the model's own pipeline does (diffusers' SD and SDXL pipelines)."""
    return encode_text(model, prompts)


def encode_text(model: Model, prompts: list[str]) -> Conditioning:
    """encode_prompts with gradients (for training the text encoder or a token's vector)."""
    if not prompts:
        raise InputError("no prompt was given; give at least one prompt (an empty string is allowed).")
    hidden, pooled = [], None
    for tokenizer, encoder, layer in zip(model.tokenizers, model.text_encoders, model.text_hidden_states, strict=True):
        ids = tokenize(tokenizer, prompts, model.device)
        out = encoder(ids, output_hidden_states=layer == "penultimate")
        hidden.append(out.hidden_states[-2] if layer == "penultimate" else out[0])
        if model.is_sdxl:
            pooled = out[0]  # the last encoder's projected pooled output (text_embeds)
    return Conditioning(torch.cat(hidden, dim=-1).to(model.dtype), None if pooled is None else pooled.to(model.dtype))


def encode_negative(model: Model, negative_prompts: list[str]) -> Conditioning:
    """The unconditional branch: the negative prompt, or zeros where the model's pipeline uses zeros."""
    encoded = encode_prompts(model, negative_prompts)
    if model.force_zeros_for_empty_prompt and not any(negative_prompts):
        return encoded.zeros_like()
    return encoded
