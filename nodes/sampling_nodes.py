"""Text to image with a CK_MODEL."""

from __future__ import annotations

from ..core.sampling import CFG, sample
from . import comfy_adapter as comfy
from .sockets import CATEGORY, CK_MODEL, SAMPLING_WIDGETS


class ConceptKitSample:
    DESCRIPTION = (
        "Generates images from a prompt with a ConceptKit model (classifier-free guidance). Each image "
        "of the batch has its own seed (seed, seed+1, ...), so a seed gives the same image whatever the "
        "batch size."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The generated images.",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (CK_MODEL, {"tooltip": "The model from ConceptKit Load Model (or another ConceptKit node)."}),
                "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "What to draw."}),
                "negative_prompt": ("STRING", {
                    "multiline": True, "default": "", "tooltip": "What to steer away from (empty for none).",
                }),
                "seed": SAMPLING_WIDGETS["seed"],
                "steps": SAMPLING_WIDGETS["steps"],
                "cfg": ("FLOAT", {
                    "default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                    "tooltip": "Classifier-free guidance scale: higher follows the prompt more closely; "
                               "1.0 turns guidance off.",
                }),
                **{name: SAMPLING_WIDGETS[name] for name in ("sampler", "width", "height", "batch_size")},
            }
        }

    def generate(self, model, prompt, negative_prompt, seed, steps, cfg, sampler, width, height, batch_size):
        result = sample(
            model,
            prompt,
            negative_prompt=negative_prompt,
            batch_size=batch_size,
            seed=seed,
            steps=steps,
            sampler=sampler,
            guidance=CFG(cfg),
            width=width or None,
            height=height or None,
            progress=comfy.Progress(steps, "ConceptKit Sample"),
            cancel=comfy.cancel_requested,
        )
        return (result.images,)
