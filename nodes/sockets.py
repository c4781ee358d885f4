"""Socket types of the pack (custom ones prefixed CK_), the category root, and the widgets every sampling node has."""

from ..core.sampling import SAMPLER_NAMES

CK_MODEL = "CK_MODEL"
CATEGORY = "ConceptKit"
MAX_SEED = 0xFFFFFFFFFFFFFFFF
CK_CONCEPT = "CK_CONCEPT"

SAMPLING_WIDGETS = {
    "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                     "tooltip": "Seed of the first image; image i of the batch uses seed + i."}),
    "steps": ("INT", {"default": 25, "min": 1, "max": 1000, "tooltip": "Denoising steps."}),
    "sampler": (SAMPLER_NAMES, {"default": "ddim", "tooltip": "The sampling method (scheduler)."}),
    "width": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8,
                      "tooltip": "Image width in pixels; 0 uses the model's native size."}),
    "height": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8,
                       "tooltip": "Image height in pixels; 0 uses the model's native size."}),
    "batch_size": ("INT", {"default": 1, "min": 1, "max": 256, "tooltip": "How many images."}),
}
