"""Lipschitz Finetune: a few images of a subject -> a CK_CONCEPT (and its loss curve); ConceptKit Subject: more
subjects for it to learn in the same run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..core.errors import InputError
from ..core.methods.lipschitz_finetune import DEFAULT_LAMBDA, TRAINABLES, finetune
from ..core.recipes import TrainingPreview
from ..core.training import (
    DEFAULT_PREVIEW_SHARE,
    DEFAULT_TEMPLATES,
    MIXED_PRECISION,
    OFFSET_NORMS,
    Companion,
    TrainConfig,
    caption_lines,
    first_caption,
    keep_result,
    kept_result,
    loss_curve,
)
from . import comfy_adapter as comfy
from .sockets import CATEGORY, CK_CONCEPT, CK_MODEL, CK_SUBJECTS, PREVIEW_SHARE, TRAINING_SEED

CAPTIONS_TOOLTIP = ("Optional: one caption per image, one per line, with {trigger} where the subject is named, e.g. "
                    "'a {trigger} on the beach' (filled as 'a <my-dog> dog on the beach'). Empty: 'a {trigger}' for "
                    "every image.")


@dataclass(frozen=True)
class SubjectToLearn:
    """One more subject of a run, as ConceptKit Subject gives it: its images (a ComfyUI IMAGE), its trigger, its
    class word and one caption per image (none: the recipe's 'a {trigger}')."""

    images: torch.Tensor
    trigger: str
    class_word: str
    captions: tuple[str, ...]

    def companion(self) -> Companion:
        return Companion(self.trigger, self.class_word, self.captions or tuple(
            DEFAULT_TEMPLATES[i % len(DEFAULT_TEMPLATES)] for i in range(len(self.images))))


class ConceptKitSubject:
    DESCRIPTION = (
        "Another subject for Lipschitz Finetune to learn in the same run (connect to its 'together' input): its "
        "images, its own trigger and class word. One run then gives one concept with every subject's trigger, "
        "trained so that each trigger draws its own subject (multi-concept DreamBooth, as kohya's concept "
        "folders), for prompts that name several of them. Chain Subject nodes for more subjects."
    )
    CATEGORY = f"{CATEGORY}/personalize"
    RETURN_TYPES = (CK_SUBJECTS,)
    RETURN_NAMES = ("subjects",)
    OUTPUT_TOOLTIPS = ("This subject after the ones connected to 'subjects': connect to Lipschitz Finetune's "
                       "'together' input, or to another Subject node.",)
    FUNCTION = "add"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "3-6 images of this subject, any size (each is centre-cropped to a "
                                                "square at the model's resolution, as the trained subject's)."}),
                "trigger": ("STRING", {"default": "<other-subject>", "tooltip": "A NEW word that will mean this "
                                       "subject, different from every other subject's of the run."}),
                "class_word": ("STRING", {"default": "creature", "tooltip": "What kind of thing this subject is "
                                          "('dog', 'cat', 'creature'); prompts name it as '<trigger> <class word>'."}),
                "captions": ("STRING", {"multiline": True, "default": "", "tooltip": CAPTIONS_TOOLTIP}),
            },
            "optional": {
                "subjects": (CK_SUBJECTS, {"tooltip": "Subjects added before this one (another Subject node's "
                                           "output)."}),
            },
        }

    def add(self, images, trigger, class_word, captions, subjects=()):
        trigger, class_word, lines = trigger.strip(), class_word.strip(), caption_lines(captions)
        if not len(images):
            raise InputError(f"Subject '{trigger}': no images were given; connect 3-6 images of the subject.")
        if not class_word:
            raise InputError(f"Subject '{trigger}': the class word is empty; give the kind of thing the subject "
                             "is (e.g. 'dog').")
        if lines and len(lines) != len(images):
            raise InputError(f"Subject '{trigger}': {len(lines)} captions were given for {len(images)} images; give "
                             "one per line for each image, or none.")
        if trigger in [s.trigger for s in subjects]:
            raise InputError(f"Subject '{trigger}': an earlier subject has this trigger; give each subject its own "
                             "word.")
        return ((*subjects, SubjectToLearn(images, trigger, class_word, tuple(lines))),)


class ConceptKitLipschitzFinetune:
    DESCRIPTION = (
        "Lipschitz Finetune (Kim, Park, Kim, ICLR 2026): teaches the model a subject from a few images, "
        "DreamBooth-style (a new trigger word + its class word), with a penalty on how far the weights move "
        "from the base model (lambda * sum ||theta - theta0||^2) instead of prior preservation, so the model "
        "keeps what it knew without generating class images. Connect ConceptKit Subject nodes to 'together' to "
        "learn several subjects in one run. Checkpoints as it goes: queue the same inputs again after a crash or "
        "Cancel and it resumes."
    )
    CATEGORY = f"{CATEGORY}/personalize"
    RETURN_TYPES = (CK_CONCEPT, "IMAGE")
    RETURN_NAMES = ("concept", "loss_curve")
    OUTPUT_TOOLTIPS = ("The learned concept: connect it to Apply Concept, Save Concept or Export Concept.",
                       "The training loss per step (and its running mean) as an image.")
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (CK_MODEL, {"tooltip": "The base model to personalize (it is left unchanged)."}),
                "images": ("IMAGE", {"tooltip": "3-6 images of the subject. Any size: each is centre-cropped to a "
                                                "square at the model's resolution; alpha is composited on white."}),
                "trigger": ("STRING", {"default": "<my-subject>", "tooltip": "A NEW word that will mean your "
                                       "subject, e.g. '<my-dog>'. Words the model already knows are refused."}),
                "class_word": ("STRING", {"default": "creature", "tooltip": "What kind of thing the subject is "
                                          "('dog', 'person', 'creature'): prompts name the subject as "
                                          "'<trigger> <class word>', e.g. 'a <my-dog> dog on the beach'."}),
                "captions": ("STRING", {"multiline": True, "default": "", "tooltip": CAPTIONS_TOOLTIP}),
                "trainable": (list(TRAINABLES), {"default": "lora", "tooltip": "What is fine-tuned: "
                              "LoRA adapters on the attention projections (small files), the attention weights, or "
                              "the whole UNet. The penalty is on the effective weight change in every case."}),
                "rank": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "LoRA rank (LoRA only)."}),
                "lipschitz_lambda": ("FLOAT", {"default": DEFAULT_LAMBDA, "min": 0.0, "max": 100.0, "step": 0.00001,
                                               "round": 1e-6, "tooltip": "Strength of the parameter-offset "
                                               "penalty. 0 is plain DreamBooth; higher keeps the model closer to "
                                               "the base (less drift, less likeness). Our default; the paper's "
                                               "value is not public."}),
                "norm": (list(OFFSET_NORMS), {"default": "frobenius", "tooltip": "How a layer's offset is measured: "
                         "Frobenius (sum of squares, the paper's L2 form) or spectral (the layer's Lipschitz "
                         "constant, by power iteration)."}),
                "steps": ("INT", {"default": 300, "min": 1, "max": 100000, "tooltip": "Training steps."}),
                "learning_rate": ("FLOAT", {"default": 5e-3, "min": 1e-7, "max": 1.0, "step": 1e-5, "round": 1e-7,
                                            "tooltip": "AdamW learning rate (LoRA: about 1e-4 on SD, 5e-3 on the "
                                            "embedded model; full/attention: 10-50x lower)."}),
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Images per step (drawn with "
                                       "repetition from your images, each augmented)."}),
                "seed": TRAINING_SEED,
            },
            "optional": {
                "train_text_encoder": ("BOOLEAN", {"default": False, "tooltip": "Also adapt the text encoder's "
                                                   "attention and the trigger's vector."}),
                "gradient_checkpointing": ("BOOLEAN", {"default": False, "tooltip": "Save GPU memory at the cost "
                                                       "of about 30% more time."}),
                "mixed_precision": (list(MIXED_PRECISION), {"default": "no", "tooltip": "Train in half "
                                    "precision on a GPU (bf16 where supported)."}),
                "checkpoint_every": ("INT", {"default": 100, "min": 0, "max": 100000, "tooltip": "Write a "
                                     "resumable checkpoint every N steps (0: only on Cancel). Removed when the "
                                     "run finishes."}),
                "preview_share": PREVIEW_SHARE,
                "together": (CK_SUBJECTS, {"tooltip": "More subjects to learn in the same run (ConceptKit Subject "
                             "nodes), each with its own trigger: one concept with every trigger. Every subject's "
                             "images are trained on: give the steps of all the separate runs together."}),
            },
        }

    def train(self, model, images, trigger, class_word, captions, trainable, rank, lipschitz_lambda, norm, steps,
              learning_rate, batch_size, seed, train_text_encoder=False, gradient_checkpointing=False,
              mixed_precision="no", checkpoint_every=100, preview_share=DEFAULT_PREVIEW_SHARE, together=()):
        lines = caption_lines(captions)
        config = TrainConfig(trigger=trigger.strip(), class_word=class_word.strip(), captions=lines or None,
                             trainable=trainable, rank=rank, train_text_encoder=train_text_encoder, steps=steps,
                             learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                             gradient_checkpointing=gradient_checkpointing, mixed_precision=mixed_precision,
                             checkpoint_every=checkpoint_every, companions=tuple(s.companion() for s in together))
        if together:  # the run's own images, then each companion's (of any size: every image is prepared alone)
            images = [*images, *(image for subject in together for image in subject.images)]
        identity = dataclasses.replace(config, parameters={"lambda": lipschitz_lambda, "norm": norm})
        folder = comfy.run_folder(images, identity, model)
        if (kept := kept_result(folder, steps)) is not None:  # this run finished before (a later node may have failed)
            return (kept.concept, loss_curve(kept.losses))
        result = finetune(model, images, config, lipschitz_lambda=lipschitz_lambda, norm=norm,
                          name=config.trigger.strip("<>") or "concept", checkpoint_dir=folder.path,
                          progress=comfy.Progress(steps, "Lipschitz Finetune"), cancel=comfy.cancel_requested,
                          preview=TrainingPreview(first_caption(config), seed), preview_share=preview_share,
                          on_finished=lambda finished: keep_result(folder, finished))
        return (result.concept, loss_curve(result.losses))
