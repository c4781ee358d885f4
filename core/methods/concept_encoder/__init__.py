"""Concept Encoder (E4T, METHODS.md §1): personalize from ONE image in seconds with a domain encoder.

Domain pre-training (`pretrain_encoder`, `conceptkit pretrain-encoder`) once per domain; per concept a few
tuning steps on the one image (`tune_concept`); at sampling the encoder recomputes the trigger's vector at
every step (`sampling`, registered as the concept group 'e4t')."""

from . import sampling  # noqa: F401  (registers the 'e4t' concept group)
from .backbones import backbone_for, one_rgb_image
from .files import EMBEDDED_ENCODER, Pretrained, load_encoder, save_encoder
from .training import PretrainSettings, TuneSettings, pretrain_encoder, tune_concept

__all__ = ["EMBEDDED_ENCODER", "PretrainSettings", "Pretrained", "TuneSettings", "backbone_for", "load_encoder",
           "one_rgb_image", "pretrain_encoder", "save_encoder", "tune_concept"]
