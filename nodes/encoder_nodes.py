"""Concept Encoder (E4T): a domain encoder, and one image -> a CK_CONCEPT in seconds."""

from __future__ import annotations

import torch

from ..core.methods.concept_encoder import (
    EMBEDDED_ENCODER,
    TuneSettings,
    backbone_for,
    load_encoder,
    one_rgb_image,
    tune_concept,
)
from ..core.methods.concept_encoder.training import DEFAULT_TUNING_STEPS
from ..core.model.image_features import CLIP_BACKBONE, ImageBackbone
from ..core.recipes import TrainingPreview
from . import comfy_adapter as comfy
from .sockets import CATEGORY, CK_CONCEPT, CK_ENCODER, CK_MODEL, MAX_SEED

EMBEDDED_CHOICE = "world creatures (embedded)"
ENCODERS = "conceptkit_encoders"


class ConceptKitLoadConceptEncoder:
    DESCRIPTION = ("Loads a Concept Encoder (E4T): a domain encoder pre-trained on one class of things (the embedded "
                   "one: the world's creatures), for the Concept Encoder node. Files are read from "
                   "models/conceptkit/encoders; pre-train your own with `conceptkit pretrain-encoder`.")
    CATEGORY = f"{CATEGORY}/personalize"
    RETURN_TYPES = (CK_ENCODER,)
    RETURN_NAMES = ("encoder",)
    OUTPUT_TOOLTIPS = ("The encoder, for the Concept Encoder node (it only fits the model it was pre-trained on).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        files = comfy.list_model_files(ENCODERS, (".safetensors",))
        return {"required": {
            "encoder": ([EMBEDDED_CHOICE, *files], {"default": EMBEDDED_CHOICE, "tooltip": "Which encoder: the "
                        "embedded world model's creature encoder, or a file from models/conceptkit/encoders."}),
        }}

    def load(self, encoder):
        path = EMBEDDED_ENCODER if encoder == EMBEDDED_CHOICE else comfy.model_path(ENCODERS, encoder)
        return (EncoderFile(path),)


class EncoderFile:
    """The encoder a CK_ENCODER socket carries: read when a model is known (it must fit that model)."""

    def __init__(self, path):
        self.path = path

    def for_model(self, model):
        return load_encoder(self.path, model)


class ConceptKitConceptEncoder:
    DESCRIPTION = ("Concept Encoder (E4T; Gal et al., SIGGRAPH 2023): personalizes the model from ONE image in "
                   "seconds. A domain encoder turns the image into the trigger word's embedding at every sampling "
                   "step, with attention weight offsets; a few tuning steps on the image sharpen the likeness. "
                   "The subject must belong to the encoder's domain (the embedded encoder: creatures).")
    CATEGORY = f"{CATEGORY}/personalize"
    RETURN_TYPES = (CK_CONCEPT,)
    RETURN_NAMES = ("concept",)
    OUTPUT_TOOLTIPS = ("The concept: connect it to Apply Concept, Save Concept or Export Concept.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (CK_MODEL, {"tooltip": "The model the encoder was pre-trained on (left unchanged)."}),
                "encoder": (CK_ENCODER, {"tooltip": "From Load Concept Encoder."}),
                "image": ("IMAGE", {"tooltip": "ONE RGB image of the subject (any size: centre-cropped to a square "
                                               "at the model's resolution)."}),
                "trigger": ("STRING", {"default": "<my-subject>", "tooltip": "A NEW word that will mean the "
                                       "subject, e.g. '<my-cat>'. Its class word is the encoder's domain."}),
                "tuning_steps": ("INT", {"default": DEFAULT_TUNING_STEPS, "min": 0, "max": 200, "tooltip":
                                 "Steps of tuning the encoder and offsets on augmentations of the image (0: the "
                                 "encoder as pre-trained, instant). The paper uses 5-15."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": False,
                                 "tooltip": "Seed of the tuning's augmentations: the same image, steps and seed give "
                                            "the same concept."}),
            },
            "optional": {
                "clip_vision": ("CLIP_VISION", {"tooltip": "For SD models: the CLIP vision model the encoder was "
                                "pre-trained with (Load CLIP Vision). The embedded model needs none."}),
            },
        }

    def encode(self, model, encoder, image, trigger, tuning_steps, seed, clip_vision=None):
        pretrained = encoder.for_model(model)
        backbone = backbone_for(model, None if clip_vision is None else comfy_backbone(clip_vision))
        pixels = one_rgb_image(image, model.default_size)
        trigger = trigger.strip()
        settings = TuneSettings(steps=tuning_steps, seed=seed)
        concept = tune_concept(model, pretrained, backbone, pixels, trigger, settings,
                               name=trigger.strip("<>") or "concept",
                               progress=comfy.Progress(max(tuning_steps, 1), "Concept Encoder"),
                               cancel=comfy.cancel_requested,
                               preview=TrainingPreview(f"a {trigger} {pretrained.class_word}", seed))
        return (concept,)


def comfy_backbone(clip_vision) -> ImageBackbone:
    """ComfyUI's CLIP_VISION as a backbone (the probe refuses anything else with the fix)."""
    probe = comfy.comfy_clip_vision_features(clip_vision, torch.zeros(1, 3, 224, 224))
    return ImageBackbone(CLIP_BACKBONE, False, int(probe.shape[-1]),
                         lambda images: comfy.comfy_clip_vision_features(clip_vision, images))
