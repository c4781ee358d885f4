"""Socket types of the pack (custom ones prefixed CK_), the category root, and the widgets every sampling node has."""

from ..core.files import IF_EXISTS as WRITE_POLICIES
from ..core.sampling import SAMPLER_NAMES

CK_MODEL = "CK_MODEL"
CATEGORY = "ConceptKit"
MAX_SEED = 0xFFFFFFFFFFFFFFFF
CK_CONCEPT = "CK_CONCEPT"
CK_ENCODER = "CK_ENCODER"  # a Concept Encoder (E4T), read for the model it is used with
CK_MEMORY = "CK_MEMORY"  # a Concept Memory (its folder; every read sees its current version)
CK_SGE = "CK_SGE"  # an SGE set (SGE Inverter): sample-wise guidance embeddings of a few images of a domain
CK_SUBJECTS = "CK_SUBJECTS"  # more subjects for a training node to learn in the same run (ConceptKit Subject)

# A seed that identifies a training run never changes by itself after a queue (the frontend's
# "control after generate" would retrain from scratch instead of resuming).
TRAINING_SEED = ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": False,
                         "tooltip": "Seed of the whole run: the same seed and inputs give the same result, and "
                                    "queueing them again after a Cancel or crash resumes the run."})

PREVIEW_SHARE = ("FLOAT", {"default": 0.1, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "At most this share "
                          "of the training's compute goes to preview renders on the progress bar (0: none). Previews "
                          "are a few sampling steps at the model's own size."})

IF_EXISTS = (list(WRITE_POLICIES), {
    "default": "counter", "tooltip": "When the name is taken: counter writes NAME_00002 (and on), as ComfyUI's save "
                                     "nodes do; overwrite replaces the file; error stops with a message. Files "
                                     "are never half-written."})

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
