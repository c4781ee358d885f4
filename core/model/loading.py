"""Load a Model from a diffusers folder, a single-file checkpoint, or the embedded world model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import InputError, ModelLoadError
from ..safetensors_io import load_safetensors, read_safetensors_metadata, refuse_pickle
from .family import detect_ldm_family, family_spec
from .ldm import modules_from_ldm
from .model import Model

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
V_PREDICTION_MARKER = "v_pred"  # the empty tensor ComfyUI writes into v-prediction checkpoints
EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "world_model"
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "fp32", "fp16", "bf16")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
HALF_ON_GPU = {"sd1": "fp16", "sdxl": "fp16", "sd2": "bf16"}  # what "auto" picks on a GPU (SD 2.x's v-prediction
# overflows in fp16 attention; where the GPU has no bf16 it stays fp32); the world model is fp32 everywhere
PREDICTION_TYPES = ("auto", "epsilon", "v_prediction")


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device '{device}' was asked for but no CUDA GPU is available; use 'auto' or 'cpu'.")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device, family: str) -> torch.dtype:
    """The weights' precision: as named, or for "auto" fp32 on a CPU (half precision there is many times slower
    and Cancel waits for a step) and half precision on a GPU where the family supports it (HALF_ON_GPU)."""
    if dtype not in DTYPES:
        raise InputError(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}.")
    if dtype != "auto":
        return TORCH_DTYPES[dtype]
    half = HALF_ON_GPU.get(family) if device.type == "cuda" else None
    if half == "bf16" and not torch.cuda.is_bf16_supported():
        half = None
    return TORCH_DTYPES[half or "fp32"]


def load_model(
    source: str | Path | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    tokenizer_dir: str | Path | None = None,
    prediction_type: str = "auto",
) -> Model:
    """Load a text-to-image model.

    `source`: None or "embedded" for the embedded world model, a diffusers folder, or a single-file
    `.safetensors` checkpoint of SD 1.x / 2.x / SDXL. Single files carry no tokenizer: give
    `tokenizer_dir` (a folder with vocab.json and merges.txt, such as ComfyUI's comfy/sd1_tokenizer).
    `prediction_type` overrides the family default for checkpoints ("auto" keeps it).
    """
    if prediction_type not in PREDICTION_TYPES:
        raise InputError(f"prediction_type '{prediction_type}' is not one of {', '.join(PREDICTION_TYPES)}.")
    if source is None or str(source) == EMBEDDED:
        model = load_embedded()
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            model = load_diffusers_folder(path)
        elif path.is_file() or path.suffix:
            model = load_single_file(path, tokenizer_dir=tokenizer_dir)
        else:
            raise ModelLoadError(f"{path}: no such file or folder.")
    return _ready(model, device, dtype, prediction_type)


def load_ldm_state_dict(
    state_dict: dict[str, torch.Tensor],
    *,
    source: str,
    tokenizer_dir: str | Path | None,
    device: str = "auto",
    dtype: str = "auto",
    prediction_type: str = "auto",
) -> Model:
    """A model from an LDM-layout state dict held in memory (a checkpoint's keys: what ComfyUI's MODEL,
    CLIP and VAE hold). The family is detected from the keys, as for single files."""
    if prediction_type not in PREDICTION_TYPES:
        raise InputError(f"prediction_type '{prediction_type}' is not one of {', '.join(PREDICTION_TYPES)}.")
    family = detect_ldm_family(set(state_dict), source)
    return _ready(model_from_ldm_state_dict(state_dict, family, source, tokenizer_dir), device, dtype, prediction_type)


def _ready(model: Model, device: str, dtype: str, prediction_type: str) -> Model:
    if prediction_type != "auto":
        model.scheduler_config = {**model.scheduler_config, "prediction_type": prediction_type}
    model.unet.eval()
    model.vae.eval()
    for te in model.text_encoders:
        te.eval()
    where = resolve_device(device)
    return model.to(where, resolve_dtype(dtype, where, model.family))


def load_embedded() -> Model:
    if not (EMBEDDED_DIR / "model_index.json").is_file():
        raise ModelLoadError(
            "The embedded world model is not part of this copy of ConceptKit yet. "
            "Load a diffusers folder or a single-file checkpoint instead."
        )
    model = load_diffusers_folder(EMBEDDED_DIR)
    model.source = EMBEDDED
    return model


def _read_json(path: Path, folder: Path) -> dict:
    """A JSON file of a model folder, or a ModelLoadError naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{folder}: {path.relative_to(folder)} is missing; the model folder is incomplete "
                             "(copy or export it again).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{folder}: {path.relative_to(folder)} is damaged ({e}); copy or export the model "
                             "again.") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{folder}: {path.relative_to(folder)} is not a JSON object; the file is damaged.")
    return data


def _diffusers_family(folder: Path, te_config: dict) -> str:
    marker = folder / "conceptkit.json"
    if marker.is_file():
        return _read_json(marker, folder).get("family", "world")
    if (folder / "text_encoder_2").is_dir():
        return "sdxl"
    return "sd2" if te_config.get("hidden_act") == "gelu" else "sd1"


def load_diffusers_folder(folder: Path) -> Model:
    """A folder in diffusers layout (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(
            f"{folder}: not a diffusers model folder (no model_index.json). "
            "Point at the folder that holds model_index.json, or at a single .safetensors checkpoint."
        )
    index = _read_json(folder / "model_index.json", folder)
    configs = {part: _read_json(folder / part / ("scheduler_config.json" if part == "scheduler" else "config.json"),
                                folder) for part in ("unet", "vae", "text_encoder", "scheduler")}
    family = _diffusers_family(folder, configs["text_encoder"])
    for weight in folder.glob("*/*"):
        if weight.suffix in (".bin", ".ckpt", ".pt") and not weight.with_suffix(".safetensors").exists():
            refuse_pickle(weight)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    kw = {"local_files_only": True, "use_safetensors": True}
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kw)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw)
        text_encoders = [CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **kw)]
        tokenizers = [CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)]
        if family == "sdxl":
            text_encoders.append(CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2", **kw))
            tokenizers.append(CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2", local_files_only=True))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{folder}: could not load the diffusers model ({str(e).splitlines()[0]}).") from None
    return Model(
        family=family,
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        scheduler_config=configs["scheduler"],
        text_hidden_states=("penultimate", "penultimate") if family == "sdxl" else ("last",),
        default_size=unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1),
        source=str(folder),
        force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", family == "sdxl")),
    )


def load_single_file(path: Path, tokenizer_dir: str | Path | None = None) -> Model:
    """A single-file SD 1.x / 2.x / SDXL checkpoint in LDM layout, converted with the shipped configs."""
    refuse_pickle(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"{path.name}: single-file checkpoints must be .safetensors files.")
    metadata = read_safetensors_metadata(path)
    state_dict = load_safetensors(path)
    family = detect_ldm_family(set(state_dict), path.name)
    return model_from_ldm_state_dict(state_dict, family, path.name, tokenizer_dir, metadata)


def model_from_ldm_state_dict(
    state_dict: dict[str, torch.Tensor],
    family: str,
    source: str,
    tokenizer_dir: str | Path | None,
    metadata: dict[str, str] | None = None,
) -> Model:
    """Build a Model from an LDM-layout state dict of a known family (also used for ComfyUI's models)."""
    spec = family_spec(family)
    unet, vae, text_encoders = modules_from_ldm(state_dict, spec, source)
    tokenizers = [load_clip_tokenizer(tokenizer_dir, te.pad_token, source) for te in spec.text_encoders]
    for te, tok in zip(text_encoders, tokenizers, strict=True):
        te.config.bos_token_id, te.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
        tok.model_max_length = te.config.max_position_embeddings
    scheduler_config = dict(spec.scheduler)
    declared = (metadata or {}).get("modelspec.prediction_type", "")
    if V_PREDICTION_MARKER in state_dict:
        declared = "v_prediction"
    if declared in ("epsilon", "v", "v_prediction"):
        scheduler_config["prediction_type"] = "v_prediction" if declared.startswith("v") else "epsilon"
    return Model(
        family=family,
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        scheduler_config=scheduler_config,
        text_hidden_states=tuple(te.hidden_state for te in spec.text_encoders),
        default_size=spec.default_size,
        source=source,
        force_zeros_for_empty_prompt=spec.force_zeros_for_empty_prompt,
    )


def load_clip_tokenizer(tokenizer_dir: str | Path | None, pad_token: str, source: str) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    if tokenizer_dir is None or not (Path(tokenizer_dir) / "vocab.json").is_file():
        where = f" ('{tokenizer_dir}' has no vocab.json)" if tokenizer_dir else ""
        raise ModelLoadError(
            f"{source}: single-file checkpoints carry no tokenizer{where}. Give tokenizer_dir: a folder with "
            "vocab.json and merges.txt of the CLIP tokenizer (every ComfyUI install has one in comfy/sd1_tokenizer)."
        )
    return CLIPTokenizer.from_pretrained(str(tokenizer_dir), pad_token=pad_token, local_files_only=True)
