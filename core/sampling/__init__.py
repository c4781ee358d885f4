"""The sampling service: one denoising loop with guidance, conditioning and attention extension points."""

from .conditioning import Conditioning, encode_negative, encode_prompts
from .extensions import AttentionController, ConditioningProvider, StaticConditioning
from .guidance import (
    CFG,
    GUIDANCE_MODES,
    Autoguidance,
    Denoise,
    Guidance,
    Passes,
    PersonalizationGuidance,
    Step,
    guidance_for,
)
from .loop import SampleResult, sample, unet_denoiser
from .preview import decode_latents, preview_image
from .schedulers import SAMPLER_NAMES, make_scheduler

__all__ = [
    "CFG", "GUIDANCE_MODES", "AttentionController", "Autoguidance", "Conditioning", "ConditioningProvider", "Denoise",
    "Guidance", "Passes", "PersonalizationGuidance", "SAMPLER_NAMES", "SampleResult", "StaticConditioning", "Step",
    "decode_latents", "encode_negative", "encode_prompts", "guidance_for", "make_scheduler", "preview_image",
    "sample", "unet_denoiser",
]
