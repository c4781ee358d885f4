"""ComfyUI's own MODEL, CLIP and VAE as a CK_MODEL, so users keep their loaders and LoRA stacks."""

from __future__ import annotations

import weakref

import torch

from ..core.model import DEVICES, DTYPES, load_ldm_state_dict
from . import comfy_adapter as comfy
from .sockets import CATEGORY, CK_MODEL


def _held(part):
    """Modules are held weakly (the cache must not keep ComfyUI's models alive); ids and uuids as they are."""
    return weakref.ref(part) if isinstance(part, torch.nn.Module) else part


def _same(held, part) -> bool:
    return held() is part if isinstance(held, weakref.ref) else held == part


class ConversionCache:
    """The last conversion, keyed by ComfyUI's model objects and patch sets plus our settings. A new key
    replaces it, so the old converted model is released as soon as the graph moves on."""

    def __init__(self):
        self._key: tuple | None = None
        self._model = None

    def get(self, identity: tuple, settings: tuple):
        if self._key is None:
            return None
        held, held_settings = self._key
        if held_settings != settings or len(held) != len(identity):
            return None
        return self._model if all(_same(h, p) for h, p in zip(held, identity, strict=True)) else None

    def put(self, identity: tuple, settings: tuple, model) -> None:
        self._key, self._model = (tuple(_held(p) for p in identity), settings), model

    def clear(self) -> None:
        self._key, self._model = None, None


CONVERSIONS = ConversionCache()


class ConceptKitModelFromComfy:
    DESCRIPTION = (
        "Turns ComfyUI's MODEL, CLIP and VAE (from Load Checkpoint, with the LoRAs of Load LoRA applied) "
        "into a CK_MODEL for the ConceptKit nodes, for SD 1.x, SD 2.x and SDXL. No second copy is read from "
        "disk; the conversion is cached until the model or its LoRAs change."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (CK_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The same model as a CK_MODEL, for every ConceptKit node.",)
    FUNCTION = "convert"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "ComfyUI's MODEL, e.g. from Load Checkpoint or Load LoRA; "
                                               "its LoRA patches are applied."}),
                "clip": ("CLIP", {"tooltip": "ComfyUI's CLIP from the same checkpoint (and LoRAs)."}),
                "vae": ("VAE", {"tooltip": "ComfyUI's VAE from the same checkpoint."}),
                "device": (list(DEVICES), {
                    "default": "auto",
                    "tooltip": "Where the ConceptKit copy runs. 'auto' picks the GPU when there is one.",
                }),
                "dtype": (list(DTYPES), {
                    "default": "auto",
                    "tooltip": "Precision of the ConceptKit copy. 'auto': fp32 on a CPU (half precision is many "
                               "times slower there), half on a GPU (fp16; bf16 for SD 2.x). The VAE stays fp32 "
                               "with fp16 to avoid black images.",
                }),
            }
        }

    def convert(self, model, clip, vae, device: str, dtype: str):
        identity = comfy.comfy_model_identity(model, clip, vae)
        settings = (device, dtype)
        converted = CONVERSIONS.get(identity, settings)
        if converted is None:
            CONVERSIONS.clear()  # release the previous conversion before building the next one
            state_dict, prediction_type = comfy.comfy_checkpoint_state_dict(model, clip, vae)
            converted = load_ldm_state_dict(state_dict, source="ComfyUI MODEL", device=device, dtype=dtype,
                                            tokenizer_dir=comfy.clip_tokenizer_dir(), prediction_type=prediction_type)
            CONVERSIONS.put(identity, settings, converted)
        return (converted,)
