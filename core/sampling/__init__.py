"""The sampling service: one denoising loop with guidance, conditioning and attention extension points."""

from .extensions import (
    AttentionController,
    AttentionStore,
    ChainedAttention,
    RecordingAttention,
    StaticConditioning,
    attention_map,
)
from .guidance import CFG, Guidance, SamplingContext, Step
from .loop import SampleResult, sample
from .preview import decode_latents, preview_image
from .schedulers import SAMPLER_NAMES, make_scheduler

__all__ = [
    "CFG", "SAMPLER_NAMES", "AttentionController", "AttentionStore", "ChainedAttention",
    "Guidance", "RecordingAttention",
    "SampleResult", "SamplingContext", "StaticConditioning", "Step", "decode_latents", "make_scheduler",
    "attention_map", "preview_image", "sample",
]
