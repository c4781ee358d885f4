"""Concept Encoder (E4T, METHODS.md §1): personalize from ONE image in seconds with a domain encoder.

Domain pre-training (`pretrain_encoder`, `conceptkit pretrain-encoder`) once per domain; per concept a few
tuning steps on the one image (`tune_concept`); at sampling the encoder recomputes the trigger's vector at
every step (`enter_encoder_concept`, the concept group 'e4t')."""

from .backbones import backbone_for, one_rgb_image
from .domain import image_domain, world_domain
from .files import EMBEDDED_ENCODER, GROUP, Pretrained, load_encoder, save_encoder
from .sampling import enter_encoder_concept
from .training import (
    DEFAULT_TUNING_STEPS,
    PRETRAIN_TRIGGER,
    TUNED_WEIGHTS,
    PretrainSettings,
    TuneSettings,
    pretrain_encoder,
    tune_concept,
)

__all__ = ["DEFAULT_TUNING_STEPS", "EMBEDDED_ENCODER", "GROUP", "PRETRAIN_TRIGGER", "PretrainSettings", "Pretrained",
           "TUNED_WEIGHTS", "TuneSettings", "backbone_for", "enter_encoder_concept", "image_domain", "load_encoder",
           "one_rgb_image", "pretrain_encoder", "save_encoder", "tune_concept", "world_domain"]
