"""The model service: one loaded text-to-image model, whatever it was loaded from, and what sampling and
training both need of it: calling the UNet, encoding text, and patching it without copying it."""

from .denoiser import Denoise, unet_denoiser
from .family import FAMILY_NAMES
from .image_features import CLIP_BACKBONE, ImageBackbone
from .loading import DEVICES, DTYPES, EMBEDDED, PREDICTION_TYPES, load_ldm_state_dict, load_model
from .model import Model
from .patches import Patch, PatchState, add_patch, patches_in_effect
from .text import Conditioning, encode_negative, encode_prompts, encode_text

__all__ = ["CLIP_BACKBONE", "DEVICES", "DTYPES", "EMBEDDED", "FAMILY_NAMES", "PREDICTION_TYPES", "Conditioning",
           "Denoise", "ImageBackbone", "Model", "Patch", "PatchState", "add_patch", "encode_negative",
           "encode_prompts", "encode_text", "load_ldm_state_dict", "load_model", "patches_in_effect",
           "unet_denoiser"]
