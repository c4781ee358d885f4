"""Loading models into a CK_MODEL socket."""

from __future__ import annotations

from ..core.errors import InputError
from ..core.model import DEVICES, DTYPES, EMBEDDED, PREDICTION_TYPES, load_model
from . import comfy_adapter as comfy
from .sockets import CATEGORY, CK_MODEL

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
CHECKPOINT_PREFIX = "checkpoints/"
DIFFUSERS_PREFIX = "diffusers/"


def model_choices() -> list[str]:
    """The embedded model first, then ComfyUI's checkpoints and diffusers folders."""
    return (
        [EMBEDDED]
        + [CHECKPOINT_PREFIX + f for f in comfy.list_model_files("checkpoints", CHECKPOINT_SUFFIXES)]
        + [DIFFUSERS_PREFIX + f for f in comfy.list_model_folders("diffusers", "model_index.json")]
    )


def resolve_model_choice(choice: str) -> str:
    """A choice of the model list -> what load_model reads; never a path outside the models folders."""
    if choice.startswith(CHECKPOINT_PREFIX):
        return str(comfy.model_path("checkpoints", choice[len(CHECKPOINT_PREFIX):]))
    if choice.startswith(DIFFUSERS_PREFIX):
        return str(comfy.model_path("diffusers", choice[len(DIFFUSERS_PREFIX):]))
    if choice != EMBEDDED:
        raise InputError(f"model '{choice}' is not one of the choices: 'embedded', {CHECKPOINT_PREFIX}NAME from the "
                         f"checkpoints folder, or {DIFFUSERS_PREFIX}NAME from the diffusers folder.")
    return choice


class ConceptKitLoadModel:
    DESCRIPTION = (
        "Loads a text-to-image model for the ConceptKit nodes: the embedded world model (default, "
        "no download), a single-file SD 1.x / 2.x / SDXL .safetensors checkpoint from ComfyUI's "
        "checkpoints folder, or a diffusers folder from its diffusers folder. Pickle files (.ckpt, .pt) "
        "are refused."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (CK_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded model, for every ConceptKit node that takes a CK_MODEL.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (model_choices(), {
                    "default": EMBEDDED,
                    "tooltip": "Which model: 'embedded' is ConceptKit's own small world model; "
                               "checkpoints/... are single .safetensors files; diffusers/... are diffusers folders.",
                }),
                "device": (list(DEVICES), {
                    "default": "auto", "tooltip": "Where the model runs. 'auto' picks the GPU when there is one.",
                }),
                "dtype": (list(DTYPES), {
                    "default": "auto",
                    "tooltip": "Precision of the weights. 'auto': fp32 on a CPU (half precision is many times "
                               "slower there), half on a GPU (fp16; bf16 for SD 2.x). fp16/bf16 halve memory on a "
                               "GPU; the VAE stays fp32 with fp16 to avoid black images.",
                }),
                "prediction_type": (list(PREDICTION_TYPES), {
                    "default": "auto",
                    "tooltip": "What the UNet predicts. 'auto' uses the model's own setting (SD 2.x 768 "
                               "checkpoints: v_prediction). Set 'epsilon' for SD 2.x 512-base checkpoints.",
                }),
            }
        }

    def load(self, model: str, device: str, dtype: str, prediction_type: str):
        loaded = load_model(
            resolve_model_choice(model),
            device=device,
            dtype=dtype,
            tokenizer_dir=comfy.clip_tokenizer_dir(),
            prediction_type=prediction_type,
        )
        return (loaded,)
