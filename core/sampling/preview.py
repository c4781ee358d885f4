"""Cheap preview images of latents during sampling and training."""

from __future__ import annotations

import torch
from PIL import Image

from ..model import Model

# Linear latent -> RGB approximations (rows: latent channels), the ones ComfyUI's previewer uses.
LATENT_RGB_FACTORS = {
    "sd1": [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350],
            [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]],
    "sdxl": [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068],
             [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]],
}
LATENT_RGB_FACTORS["sd2"] = LATENT_RGB_FACTORS["sd1"]
DECODE_MAX_SIDE = 32  # latents this small are decoded with the VAE itself


@torch.no_grad()
def preview_image(model: Model, latents: torch.Tensor) -> Image.Image:
    """An RGB preview of the first latent of a batch."""
    x = latents[:1]
    if max(x.shape[-2:]) <= DECODE_MAX_SIDE or model.family not in LATENT_RGB_FACTORS:
        rgb = decode_latents(model, x)[0]
    else:
        factors = torch.tensor(LATENT_RGB_FACTORS[model.family], dtype=torch.float32)
        rgb = torch.einsum("chw,cr->hwr", x[0].float().cpu(), factors)
        rgb = ((rgb + 1) / 2).clamp(0, 1)
    return Image.fromarray((rgb.cpu().numpy() * 255).round().astype("uint8"))


@torch.no_grad()
def decode_latents(model: Model, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in ComfyUI's layout: float [B, H, W, 3] in 0..1 on the CPU."""
    vae = model.vae
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu()
