"""One loaded text-to-image model: the parts, the family, and where it runs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch


@dataclass
class Model:
    """UNet, VAE, text encoder(s) with their tokenizer(s) and the noise schedule of one model.

    `text_hidden_states[i]` says which layer of text encoder i conditions the UNet ("last" or
    "penultimate"). SDXL's second encoder also gives the pooled embedding.
    """

    family: str  # "sd1" | "sd2" | "sdxl" | "world"
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list[torch.nn.Module]
    tokenizers: list
    scheduler_config: dict
    text_hidden_states: tuple[str, ...]
    default_size: int
    source: str
    force_zeros_for_empty_prompt: bool = False
    patches: tuple = ()  # Patch objects (model.patches.add_patch: applied concepts, ...); in effect while sampling
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device  # diffusers' unet.device walks every module: too slow per step

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def is_sdxl(self) -> bool:
        return self.unet.config.addition_embed_type == "text_time"

    def fingerprint(self) -> str:
        """Identity of the base weights, for checking that a concept file was made for this model."""
        if self._fingerprint is None:
            h = hashlib.sha256(self.family.encode())
            probes = [self.unet.conv_in.weight, self.unet.conv_out.weight]
            probes += [te.get_input_embeddings().weight[:64] for te in self.text_encoders]
            for t in probes:
                h.update(str(tuple(t.shape)).encode())
                h.update(t.detach().float().cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Model:
        """Move the parts; the VAE stays in fp32 when asked for fp16 (fp16 VAEs overflow to NaN)."""
        vae_dtype = torch.float32 if dtype == torch.float16 else dtype
        parts = [(self.unet, dtype), (self.vae, vae_dtype)] + [(te, dtype) for te in self.text_encoders]
        for part, part_dtype in parts:
            part.to(device=device)
            if part_dtype is not None and part.dtype != part_dtype:
                part.to(dtype=part_dtype)
        return self
