"""The one place that talks to ComfyUI: progress bars with previews, Cancel, model folders, and
ComfyUI's own MODEL/CLIP/VAE objects.

Nothing of ComfyUI is imported when this module loads; each function looks for ComfyUI when it is
called and falls back to plain behaviour without it: log lines, and the headless models folder (the
one a caller hands over with `headless_models_dir`, else CONCEPTKIT_MODELS_DIR, else ./models).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from PIL import Image

from ..core.errors import InputError
from ..core.files import guarded, make_folder, safe_file_name
from ..core.training import RunFolder

log = logging.getLogger("conceptkit")

MODELS_DIR_ENV = "CONCEPTKIT_MODELS_DIR"  # headless: <dir>/checkpoints, <dir>/diffusers, <dir>/clip_tokenizer
TOKENIZER_ENV = "CONCEPTKIT_CLIP_TOKENIZER"
PREVIEW_MAX_SIDE = 512
COMFY_PREDICTION_TYPES = {"EPS": "epsilon", "V_PREDICTION": "v_prediction"}  # ComfyUI's ModelType names


def _comfy(module: str):
    """A ComfyUI module when running inside ComfyUI, else None."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


REQUIRED_MODULES = ("torch", "diffusers", "transformers", "safetensors", "numpy", "PIL", "einops", "accelerate",
                    "peft")  # requirements.txt, by import name


def warn_missing_dependencies() -> list[str]:
    """Heavy libraries load on first use, so the pack loads without them; say at start-up what is missing
    (looked up, not imported) and how to install it, rather than fail later inside a node."""
    missing = [m for m in REQUIRED_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        log.warning("ConceptKit: missing %s; install the pack's requirements into this Python: "
                    "pip install -r %s", ", ".join(missing), Path(__file__).resolve().parents[1] / "requirements.txt")
    return missing


def in_comfyui() -> bool:
    return _comfy("folder_paths") is not None and _comfy("comfy.utils") is not None


class Progress:
    """Per-step progress of one long node: ComfyUI's ProgressBar with previews, or log lines headless."""

    def __init__(self, total: int, label: str):
        self.total, self.label = total, label
        utils = _comfy("comfy.utils") if in_comfyui() else None
        self._bar = utils.ProgressBar(total) if utils else None
        self._logged = -1

    def __call__(self, step: int, total: int, preview: Callable[[], Image.Image] | None = None) -> None:
        if self._bar is not None:
            image = preview() if preview is not None else None
            shown = ("JPEG", image, min(max(image.size), PREVIEW_MAX_SIDE)) if image else None  # never upscaled
            self._bar.update_absolute(step, total, shown)
            return
        tenth = step * 10 // max(total, 1)
        if tenth != self._logged:
            self._logged = tenth
            log.info("%s: step %d/%d", self.label, step, total)


def cancel_requested() -> bool:
    """True when the user pressed Cancel. Inside ComfyUI this raises ComfyUI's own interrupt instead,
    so ComfyUI reports the run as interrupted rather than failed."""
    management = _comfy("comfy.model_management") if in_comfyui() else None
    if management is not None:
        management.throw_exception_if_processing_interrupted()
    return False


# Our own folders inside ComfyUI's models folder (registered with ComfyUI on first use), with their extensions.
OWN_FOLDERS = {"conceptkit_concepts": ("conceptkit/concepts", {".safetensors"}),
               "conceptkit_exports": ("conceptkit/exports", {""}),
               "conceptkit_checkpoints": ("conceptkit/checkpoints", {""}),
               "conceptkit_encoders": ("conceptkit/encoders", {".safetensors"}),
               "conceptkit_sge": ("conceptkit/sge", {".safetensors"}),
               "conceptkit_memories": ("conceptkit/memories", {""})}


_MODELS_DIR: ContextVar[Path | None] = ContextVar("conceptkit_models_dir", default=None)


@contextmanager
def headless_models_dir(folder: Path | None) -> Iterator[None]:
    """Headless, the models folder for the block (the runner's --models); None keeps the default."""
    token = _MODELS_DIR.set(Path(folder) if folder is not None else _MODELS_DIR.get())
    try:
        yield
    finally:
        _MODELS_DIR.reset(token)


def _headless_dir(kind: str) -> Path:
    """Headless, a model folder kind lives in the handed-over models folder, else CONCEPTKIT_MODELS_DIR, else
    ./models (as in ComfyUI)."""
    root = _MODELS_DIR.get() or Path(os.environ.get(MODELS_DIR_ENV) or "models")
    return root / OWN_FOLDERS.get(kind, (kind,))[0]


def _registered(folder_paths, kind: str) -> None:
    if kind in OWN_FOLDERS and kind not in folder_paths.folder_names_and_paths:
        relative, extensions = OWN_FOLDERS[kind]
        folder_paths.folder_names_and_paths[kind] = ([str(Path(folder_paths.models_dir) / relative)], extensions)


def models_folder(kind: str) -> Path:
    """Where files of `kind` ("loras", "embeddings", "conceptkit_concepts", ...) live: ComfyUI's first folder of
    that kind; headless, <models dir>/<kind> (--models or CONCEPTKIT_MODELS_DIR), else ./models/<kind>. It may
    not exist yet."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        _registered(folder_paths, kind)
        return Path(folder_paths.get_folder_paths(kind)[0])
    return _headless_dir(kind)


def writable_folder(kind: str) -> Path:
    """models_folder(kind), created if missing: where files of that kind are written."""
    return make_folder(models_folder(kind))


def valid_file_name(name: str, what: str) -> bool | str:
    """A node's VALIDATE_INPUTS for a file name: True, or the message ComfyUI shows on the node before the
    prompt runs."""
    try:
        safe_file_name(name, what)
    except InputError as e:
        return str(e)
    return True


def run_folder(images, settings, model) -> RunFolder:
    """Where a node's training run checkpoints and keeps its result: named from its images, settings (anything
    with a `signature()`) and base model, in the conceptkit_checkpoints folder, so queueing it again resumes."""
    return RunFolder.named(writable_folder("conceptkit_checkpoints"), images, settings, model.fingerprint())


def written_file_result(path: Path, what: str) -> dict:
    """An output node's result for a file it wrote: one log line, and the path shown on the node (the pack's
    web extension puts the UI's `text` into a read-only box on Save/Export nodes)."""
    log.info("ConceptKit: wrote %s %s", what, path)
    return {"ui": {"text": [str(path)]}}


def list_model_files(kind: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files of one model folder kind ("checkpoints", ...), as names relative to that folder."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        _registered(folder_paths, kind)
        return [f for f in folder_paths.get_filename_list(kind) if f.lower().endswith(suffixes)]
    folder = _headless_dir(kind)
    if not folder.is_dir():
        return []
    with guarded(folder, "list the files in"):
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in suffixes)


def list_model_folders(kind: str, marker: str) -> list[str]:
    """Sub-folders of one model folder kind that contain `marker` (diffusers models: model_index.json)."""
    folder_paths = _comfy("folder_paths")
    roots = [Path(p) for p in folder_paths.get_folder_paths(kind)] if folder_paths else [_headless_dir(kind)]
    found = []
    for root in roots:
        if root.is_dir():
            with guarded(root, "list the models in"):
                found += [str(p.parent.relative_to(root)) for p in root.rglob(marker)]
    return sorted(found)


def model_path(kind: str, name: str) -> Path:
    """Full path of a file or folder listed by list_model_files / list_model_folders; never outside them."""
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise InputError(f"'{name}' points outside the {kind} folder; choose a file from the list.")
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        _registered(folder_paths, kind)
        full = folder_paths.get_full_path(kind, name)
        if full:
            return Path(full)
        for root in folder_paths.get_folder_paths(kind):
            if (Path(root) / name).exists():
                return Path(root) / name
        return Path(name)
    return _headless_dir(kind) / name


def clip_tokenizer_dir() -> Path | None:
    """A CLIP tokenizer folder for single-file checkpoints: ComfyUI's own, or the configured one."""
    configured = os.environ.get(TOKENIZER_ENV)
    if configured:
        return Path(configured)
    sd1_clip = _comfy("comfy.sd1_clip")  # comfy is a namespace package: locate it by one of its modules
    if sd1_clip is not None and getattr(sd1_clip, "__file__", None):
        candidate = Path(sd1_clip.__file__).parent / "sd1_tokenizer"
        if candidate.is_dir():
            return candidate
    headless = _headless_dir("clip_tokenizer")
    return headless if headless.is_dir() else None


def _require_comfy_parts(model, clip, vae):
    """comfy.model_management, when these are ComfyUI's MODEL (ModelPatcher), CLIP and VAE objects."""
    management = _comfy("comfy.model_management")
    parts = (hasattr(model, "model") and hasattr(clip, "cond_stage_model") and hasattr(vae, "first_stage_model"))
    if management is None or not parts:
        raise InputError("Model From Comfy takes ComfyUI's MODEL, CLIP and VAE (from Load Checkpoint and "
                         "Load LoRA); outside ComfyUI use ConceptKit Load Model instead.")
    return management


def comfy_checkpoint_state_dict(model, clip, vae) -> tuple[dict, str]:
    """ComfyUI's MODEL (with the LoRA patches it carries applied), CLIP and VAE as one LDM-layout state
    dict, exactly as ComfyUI's own CheckpointSave gathers it, and the model's prediction type."""
    management = _require_comfy_parts(model, clip, vae)
    model_type = model.model.model_type.name
    if model_type not in COMFY_PREDICTION_TYPES:
        raise InputError(f"Model From Comfy: this MODEL predicts '{model_type}'; ConceptKit handles SD 1.x, "
                         "SD 2.x and SDXL models (eps or v prediction).")
    management.load_models_gpu([model, clip.load_model()], force_patch_weights=True)
    state_dict = model.model.state_dict_for_saving(clip.get_sd(), vae.get_sd(), None)
    return state_dict, COMFY_PREDICTION_TYPES[model_type]


def comfy_model_identity(model, clip, vae) -> tuple:
    """What a converted model depends on: ComfyUI's model objects and the patch sets (LoRAs, strengths)
    on them. LoraLoader gives a patcher a new patches_uuid whenever its patches change."""
    _require_comfy_parts(model, clip, vae)
    return (model.model, getattr(model, "patches_uuid", None), clip.cond_stage_model,
            getattr(clip.patcher, "patches_uuid", None), vae.first_stage_model)


def comfy_clip_vision_features(clip_vision, images):
    """ComfyUI's CLIP_VISION (Load CLIP Vision) on images [B, 3, H, W] in -1..1: its image embeddings [B, C]
    (ComfyUI resizes, crops and normalizes as CLIP does)."""
    if not hasattr(clip_vision, "encode_image"):
        raise InputError("clip_vision must be ComfyUI's CLIP_VISION (from a Load CLIP Vision node).")
    pixels = ((images.float() + 1) / 2).permute(0, 2, 3, 1).cpu()
    return clip_vision.encode_image(pixels).image_embeds
