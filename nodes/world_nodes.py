"""The world's personal subjects and few-shot domains as images, so example workflows run as shipped with no
files to find."""

from __future__ import annotations

import torch

from ..core.errors import InputError
from ..core.methods.sge_inverter import MAX_IMAGES
from ..core.world import FAIR_DOMAINS, HELDOUT_DOMAINS, HELDOUT_INSTANCE_SEEDS, style_renders, training_renders
from .sockets import CATEGORY, MAX_SEED


class ConceptKitWorldSubject:
    DESCRIPTION = ("Renders a few images of one of the embedded world's held-out creatures (subjects the embedded "
                   "model has never seen), with one caption per image. A stand-in for your own photos in the "
                   "example workflows.")
    CATEGORY = f"{CATEGORY}/world"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("images", "captions")
    OUTPUT_TOOLTIPS = ("The renders (64x64).", "One caption per image, with {trigger} and {class} slots.")
    FUNCTION = "render"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "subject": ("INT", {"default": 0, "min": 0, "max": len(HELDOUT_INSTANCE_SEEDS) - 1,
                                "tooltip": "Which held-out creature."}),
            "count": ("INT", {"default": 4, "min": 1, "max": 16, "tooltip": "How many images."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": False,
                             "tooltip": "Varies the backgrounds and places of the renders (fixed: a training "
                                        "run downstream resumes only on the same images)."}),
        }}

    def render(self, subject, count, seed):
        try:
            images, captions = training_renders(subject, count, seed)
        except ValueError as e:
            raise InputError(str(e)) from None
        return (torch.from_numpy(images).float() / 255, "\n".join(captions))


class ConceptKitWorldDomain:
    DESCRIPTION = ("Renders a few images of one of the embedded world's unseen domains: its creatures and shapes "
                   "on a background the embedded model never saw, or in a place no caption names. A stand-in for "
                   "your own few images of a new domain in the SGE Inverter's example workflow.")
    CATEGORY = f"{CATEGORY}/world"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The renders (64x64).",)
    FUNCTION = "render"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "count": ("INT", {"default": MAX_IMAGES, "min": 1, "max": 16, "tooltip": "How many images."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": False,
                             "tooltip": "Which scenes (fixed: an inversion downstream resumes only on the same "
                                        "images)."}),
        }, "optional": {
            "domain": (list(HELDOUT_DOMAINS), {"default": FAIR_DOMAINS[0], "tooltip": "top_left, bottom_right: the "
                       "scene's object in that corner (the domains the embedded model can learn and that commit "
                       "where the SGE Inverter guides: `conceptkit world check`); zigzag: a fine texture; "
                       "big_checks: 16 px checks; snowline: the bottom third of the background white."}),
        }}

    def render(self, count, seed, domain=FAIR_DOMAINS[0]):
        if domain not in HELDOUT_DOMAINS:
            raise InputError(f"domain '{domain}' is not one of {', '.join(HELDOUT_DOMAINS)}.")
        return (torch.from_numpy(style_renders(count, seed, domain=domain)).float() / 255,)
