"""Calling the UNet: one evaluation of a batch, as sampling and training both need it."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .model import Model
from .text import Conditioning

Denoise = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]


def unet_denoiser(model: Model, width: int, height: int) -> Denoise:
    """`denoise(x, t, cond)`: one UNet evaluation, with SDXL's size conditioning when the model needs it."""
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=model.device, dtype=model.dtype)

    def denoise(x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        added = None
        if model.is_sdxl:
            added = {"text_embeds": cond.pooled, "time_ids": time_ids.repeat(x.shape[0], 1)}
        return model.unet(x, t, encoder_hidden_states=cond.hidden, added_cond_kwargs=added, return_dict=False)[0]

    return denoise
