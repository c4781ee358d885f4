"""Personalization Guidance Sampler: a personalized model sampled with personalization guidance, CFG or
autoguidance."""

from __future__ import annotations

from ..core.methods.personalization_guidance import DEFAULT_OMEGA, DEFAULT_W, GUIDANCE_MODES, personalization_sample
from . import comfy_adapter as comfy
from .sockets import CATEGORY, CK_CONCEPT, CK_MODEL, SAMPLING_WIDGETS

OMEGA = {"min": 0.0, "max": 1.0, "step": 0.05, "round": 0.001}


class ConceptKitPersonalizationGuidanceSampler:
    DESCRIPTION = (
        "Personalization guidance (Park et al., ICCV 2025) for a fine-tuned subject: the guidance's weak branch "
        "is the fine-tuned model partly unlearned toward its base (weights base + omega * (tuned - base)), which "
        "balances likeness and prompt following at the cost of plain CFG (two UNet passes per step; a LoRA is "
        "re-scaled, not copied). Modes: personalization, cfg (the fine-tuned model with CFG, for comparison), "
        "autoguidance (the same weak model on the prompt itself). Each image has its own seed (seed, seed+1, ...)."
    )
    CATEGORY = f"{CATEGORY}/personalize"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The generated images.",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (CK_MODEL, {"tooltip": "The base (pre-trained) model: the weak model is interpolated "
                                                "toward it."}),
                "prompt": ("STRING", {"multiline": True, "default": "",
                                      "tooltip": "What to draw; write the concept's trigger word."}),
                "negative_prompt": ("STRING", {"multiline": True, "default": "",
                                               "tooltip": "What the unconditional branch reads (empty for none); "
                                                          "autoguidance does not use it."}),
                "mode": (list(GUIDANCE_MODES), {"default": "personalization",
                                          "tooltip": "personalization: weak branch = weakened model on the negative "
                                                     "prompt; cfg: plain CFG on the fine-tuned model (omega unused); "
                                                     "autoguidance: weakened model on the prompt."}),
                "w": ("FLOAT", {"default": DEFAULT_W, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                "tooltip": "Guidance scale: how far past the weak branch the prediction is pushed. "
                                           "Autoguidance wants smaller values (about 1.5-3)."}),
                "omega_start": ("FLOAT", {"default": DEFAULT_OMEGA, **OMEGA,
                                          "tooltip": "How much of the fine-tuning the weak model keeps at the first "
                                                     "step: 1 = all (personalization becomes CFG), 0 = none (the base "
                                                     "model)."}),
                "omega_end": ("FLOAT", {"default": DEFAULT_OMEGA, **OMEGA,
                                        "tooltip": "omega at the last step; omega changes linearly from omega_start. "
                                                   "Equal to omega_start for a constant omega."}),
                **{name: SAMPLING_WIDGETS[name] for name in ("sampler", "steps", "seed", "width", "height",
                                                             "batch_size")},
            },
            "optional": {
                "concept": (CK_CONCEPT, {"tooltip": "The personalization: a concept trained for the base model "
                                                    "(LoRA, full fine-tune or token). Connect this or "
                                                    "finetuned_model."}),
                "finetuned_model": (CK_MODEL, {"tooltip": "The personalized model instead of a concept: the base "
                                                          "with Apply Concept, or a fine-tuned checkpoint of the same "
                                                          "architecture (its weights are compared with the base's)."}),
            },
        }

    def generate(self, model, prompt, negative_prompt, mode, w, omega_start, omega_end, sampler, steps, seed,
                 width, height, batch_size, concept=None, finetuned_model=None):
        result = personalization_sample(
            model, prompt, concept=concept, finetuned=finetuned_model, mode=mode, w=w, omega_start=omega_start,
            omega_end=omega_end, negative_prompt=negative_prompt, batch_size=batch_size, seed=seed, steps=steps,
            sampler=sampler, width=width or None, height=height or None,
            progress=comfy.Progress(steps, "Personalization Guidance Sampler"), cancel=comfy.cancel_requested,
        )
        return (result.images,)
