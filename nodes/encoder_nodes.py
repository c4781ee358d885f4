"""Concept Encoder (E4T): a domain encoder, and one image -> a CK_CONCEPT in seconds."""

from __future__ import annotations

import torch

from ..core.errors import InputError
from ..core.methods.concept_encoder import (
    DEFAULT_TUNING_STEPS,
    EMBEDDED_ENCODER,
    PRETRAIN_TRIGGER,
    TUNED_WEIGHTS,
    Pretrained,
    PretrainSettings,
    TuneSettings,
    backbone_for,
    image_domain,
    load_encoder,
    one_rgb_image,
    pretrain_encoder,
    save_encoder,
    tune_concept,
    world_domain,
)
from ..core.model import CLIP_BACKBONE, ImageBackbone
from ..core.recipes import TrainingPreview
from ..core.training import DEFAULT_PREVIEW_SHARE, Stream, caption_lines, settings_signature
from . import comfy_adapter as comfy
from .sockets import CATEGORY, CK_CONCEPT, CK_ENCODER, CK_MODEL, IF_EXISTS, MAX_SEED, PREVIEW_SHARE, TRAINING_SEED

EMBEDDED_CHOICE = "world creatures (embedded)"
ENCODERS = "conceptkit_encoders"


class ConceptKitLoadConceptEncoder:
    DESCRIPTION = ("Loads a Concept Encoder (E4T): a domain encoder pre-trained on one class of things (the embedded "
                   "one: the world's creatures), for the Concept Encoder node. Files are read from "
                   "models/conceptkit/encoders; pre-train your own with Pretrain Concept Encoder or `conceptkit "
                   "pretrain-encoder`.")
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
                                       "subject, e.g. '<my-cat>'. It takes the class word's place in prompts: 'a "
                                       "<my-cat> on the sofa'."}),
                "tuning_steps": ("INT", {"default": DEFAULT_TUNING_STEPS, "min": 0, "max": 200, "tooltip":
                                 "Steps of tuning the encoder, its offsets and tune_weights on augmentations of the "
                                 "image (0: the encoder as pre-trained, instant). The paper uses 5-15."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": False,
                                 "tooltip": "Seed of the tuning's augmentations: the same image, steps and seed give "
                                            "the same concept."}),
            },
            "optional": {
                "clip_vision": ("CLIP_VISION", {"tooltip": "For SD models: the CLIP vision model the encoder was "
                                "pre-trained with (Load CLIP Vision). The embedded model needs none."}),
                "tune_weights": (list(TUNED_WEIGHTS), {"default": TuneSettings.weights, "tooltip": "What the "
                                 "tuning steps train beside the encoder. full: every UNet weight (the best "
                                 "likeness; the concept holds a UNet-sized offset: 6 MB on the embedded model, "
                                 "3.4 GB on SD1.5 in float32, so choose attention there); attention: the "
                                 "attention weights; offsets: only the encoder's attention offsets (the "
                                 "smallest concept)."}),
                "caption": ("STRING", {"default": "", "multiline": True, "tooltip": "What the image shows, "
                            "{trigger} where the subject is: 'a {trigger} on the left, blue background' (World "
                            "Subject's captions fit). Tuning then learns the subject, not the scene around it "
                            "(uncropped). Empty: 'a {trigger}' on random crops."}),
            },
        }

    def encode(self, model, encoder, image, trigger, tuning_steps, seed, clip_vision=None, tune_weights="full",
               caption=""):
        pretrained = encoder.for_model(model)
        backbone = backbone_for(model, None if clip_vision is None else comfy_backbone(clip_vision))
        pixels = one_rgb_image(image, model.default_size)
        trigger = trigger.strip()
        lines = caption_lines(caption)
        settings = TuneSettings(steps=tuning_steps, seed=seed, weights=tune_weights, caption=lines[0] if lines else "")
        concept = tune_concept(model, pretrained, backbone, pixels, trigger, settings,
                               name=trigger.strip("<>") or "concept",
                               progress=comfy.Progress(max(tuning_steps, 1), "Concept Encoder"),
                               cancel=comfy.cancel_requested,
                               preview=TrainingPreview(f"a {trigger} {pretrained.class_word}", seed))
        return (concept,)


class ConceptKitPretrainConceptEncoder:
    DESCRIPTION = ("Pre-trains a Concept Encoder (E4T) on a domain: many images of one class, or on the embedded "
                   "model the world's creatures. Long training in the graph: a progress bar with previews, Cancel "
                   "within a step, and queueing the same inputs again resumes from the last checkpoint. Writes "
                   "models/conceptkit/encoders/NAME.safetensors (shown on the node), which Load Concept Encoder "
                   "lists; the same as `conceptkit pretrain-encoder`.")
    CATEGORY = f"{CATEGORY}/personalize"
    RETURN_TYPES = (CK_ENCODER,)
    RETURN_NAMES = ("encoder",)
    OUTPUT_TOOLTIPS = ("The pre-trained encoder, for the Concept Encoder node.",)
    OUTPUT_NODE = True
    FUNCTION = "pretrain"

    @classmethod
    def INPUT_TYPES(cls):
        defaults = PretrainSettings()
        return {
            "required": {
                "model": (CK_MODEL, {"tooltip": "The model the encoder is for (left unchanged; the encoder fits only "
                                                "this model)."}),
                "name": ("STRING", {"default": "my_encoder", "tooltip": "File name in models/conceptkit/encoders "
                                    "(no folders)."}),
                "class_word": ("STRING", {"default": "creature", "tooltip": "The kind of thing every image of the "
                                          "domain shows ('cat', 'creature'): where the trigger's vector starts."}),
                "steps": ("INT", {"default": defaults.steps, "min": 1, "max": 1000000, "tooltip": "Training steps. "
                                  "A real model's domain needs tens of thousands (hours on a GPU)."}),
                "batch_size": ("INT", {"default": defaults.batch_size, "min": 1, "max": 256, "tooltip": "Images "
                                       "per step."}),
                "learning_rate": ("FLOAT", {"default": defaults.learning_rate, "min": 1e-7, "max": 1.0,
                                            "step": 1e-5, "round": 1e-7, "tooltip": "AdamW learning rate of the "
                                            "encoder and the attention offsets."}),
                "seed": TRAINING_SEED,
                "if_exists": IF_EXISTS,
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "Many images of the domain's class (hundreds or more; any size: "
                                                "centre-cropped to the model's resolution). None: the world's "
                                                "creatures (the embedded model only)."}),
                "start_from": (CK_ENCODER, {"tooltip": "An encoder to go on pre-training (from Load Concept "
                                            "Encoder); none: a fresh one."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "For SD models: the CLIP vision model the encoder reads "
                                "images with (Load CLIP Vision). The embedded model needs none."}),
                "checkpoint_every": ("INT", {"default": defaults.checkpoint_every, "min": 0, "max": 100000,
                                             "tooltip": "Write a resumable checkpoint every N steps (0: only on "
                                             "Cancel). Removed when the run finishes."}),
                "preview_share": PREVIEW_SHARE,
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, name):
        return comfy.valid_file_name(name, "encoder name")

    def pretrain(self, model, name, class_word, steps, batch_size, learning_rate, seed, if_exists, images=None,
                 start_from=None, clip_vision=None, checkpoint_every=PretrainSettings.checkpoint_every,
                 preview_share=DEFAULT_PREVIEW_SHARE):
        class_word = class_word.strip()
        if not class_word:
            raise InputError("the class word is empty; give the kind of thing the domain's images show (e.g. 'cat').")
        backbone = backbone_for(model, None if clip_vision is None else comfy_backbone(clip_vision))
        start = start_from.for_model(model) if start_from is not None else \
            Pretrained.fresh(model, backbone, class_word, seed=seed)
        settings = PretrainSettings(steps=steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                                    checkpoint_every=checkpoint_every)
        folder = comfy.run_folder(torch.zeros(1) if images is None else images,
                                  _PretrainIdentity(settings, class_word, start_from), model)
        trained = folder.kept(lambda path: load_encoder(path, model))  # this run finished before
        if trained is None:
            trained, _ = pretrain_encoder(
                model, backbone, start, settings, _domain(model, images), checkpoint_dir=folder.path,
                progress=comfy.Progress(steps, "Pretrain Concept Encoder"), cancel=comfy.cancel_requested,
                preview=TrainingPreview(f"a {class_word}", seed), preview_share=preview_share,
                on_finished=lambda encoder: folder.keep(lambda path: save_encoder(encoder, path, "overwrite")))
        written = save_encoder(trained, comfy.writable_folder(ENCODERS) / f"{name}.safetensors", if_exists)
        return {**comfy.written_file_result(written, "Concept Encoder"), "result": (EncoderFile(written),)}


class _PretrainIdentity:
    """What makes one pre-training the same as another (its run folder): the settings, the class word and where
    it starts."""

    def __init__(self, settings: PretrainSettings, class_word: str, start_from):
        self.values = (settings_signature(settings), class_word, str(getattr(start_from, "path", "")))

    def signature(self) -> str:
        return repr(self.values)


def _domain(model, images) -> Stream:
    if images is not None:
        return image_domain(images, model.default_size, PRETRAIN_TRIGGER)
    if model.family != "world":
        raise InputError("give images of the domain (many images of one class): only the embedded model has a "
                         "domain of its own (the world's creatures).")
    return Stream(world_domain(PRETRAIN_TRIGGER))


def comfy_backbone(clip_vision) -> ImageBackbone:
    """ComfyUI's CLIP_VISION as a backbone (the probe refuses anything else with the fix)."""
    probe = comfy.comfy_clip_vision_features(clip_vision, torch.zeros(1, 3, 224, 224))
    return ImageBackbone(CLIP_BACKBONE, False, int(probe.shape[-1]),
                         lambda images: comfy.comfy_clip_vision_features(clip_vision, images))
