"""Model families (SD 1.x, SD 2.x, SDXL, and the embedded world model) and how to tell them apart."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import ModelLoadError

CONFIG_DIR = Path(__file__).parent / "configs"
SINGLE_FILE_FAMILIES = ("sd1", "sd2", "sdxl")
FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "world": "ConceptKit world model"}


@dataclass(frozen=True)
class TextEncoderSpec:
    ldm_prefix: str
    kind: str  # "clip" (HF layout inside the checkpoint) or "open_clip"
    hidden_act: str
    with_projection: bool
    hidden_state: str  # "last" or "penultimate"
    drop_last_layer: bool
    pad_token: str


@dataclass(frozen=True)
class FamilySpec:
    family: str
    description: str
    default_size: int
    unet_heads: dict
    vae_scaling_factor: float
    text_encoders: tuple[TextEncoderSpec, ...]
    scheduler: dict
    force_zeros_for_empty_prompt: bool


@cache
def family_spec(family: str) -> FamilySpec:
    """The configuration shipped in the package for one single-file family."""
    if family not in SINGLE_FILE_FAMILIES:
        raise ModelLoadError(f"unknown model family '{family}'; expected one of {', '.join(SINGLE_FILE_FAMILIES)}.")
    raw = json.loads((CONFIG_DIR / f"{family}.json").read_text())
    return FamilySpec(
        family=raw["family"],
        description=raw["description"],
        default_size=raw["default_size"],
        unet_heads=raw["unet"]["heads"],
        vae_scaling_factor=raw["vae"]["scaling_factor"],
        text_encoders=tuple(TextEncoderSpec(**te) for te in raw["text_encoders"]),
        scheduler=raw["scheduler"],
        force_zeros_for_empty_prompt=raw["force_zeros_for_empty_prompt"],
    )


UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


def detect_ldm_family(keys: set[str], source: str) -> str:
    """Family of an LDM-layout state dict (single-file checkpoint), from its key names."""
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        hint = ""
        if any("lora_" in k for k in keys):
            hint = " It looks like a LoRA: load a base checkpoint and apply the LoRA to it."
        elif any(k.startswith(("encoder.", "decoder.")) for k in keys):
            hint = " It looks like a VAE on its own."
        raise ModelLoadError(f"{source}: not a full Stable Diffusion checkpoint (no UNet weights found).{hint}")
    if any(k.startswith("conditioner.embedders.1.model.") for k in keys):
        if not any(k.startswith("conditioner.embedders.0.transformer.") for k in keys):
            raise ModelLoadError(f"{source}: SDXL refiner checkpoints are not supported; use an SDXL base model.")
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd1"
    raise ModelLoadError(
        f"{source}: the checkpoint has a UNet but no text encoder this version can read "
        "(expected SD 1.x, SD 2.x or SDXL key layouts)."
    )
