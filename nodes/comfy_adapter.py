"""The one place that talks to ComfyUI: progress bars with previews, Cancel, and model folders.

Nothing of ComfyUI is imported when this module loads; each function looks for ComfyUI when it is
called and falls back to plain behaviour (logging, environment-configured folders) without it.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from PIL import Image

log = logging.getLogger("conceptkit")

MODELS_DIR_ENV = "CONCEPTKIT_MODELS_DIR"  # headless: <dir>/checkpoints, <dir>/diffusers, <dir>/clip_tokenizer
TOKENIZER_ENV = "CONCEPTKIT_CLIP_TOKENIZER"
PREVIEW_MAX_SIDE = 512


def _comfy(module: str):
    """A ComfyUI module when running inside ComfyUI, else None."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


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
            self._bar.update_absolute(step, total, ("JPEG", image, PREVIEW_MAX_SIDE) if image else None)
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


def _headless_dir(kind: str) -> Path | None:
    root = os.environ.get(MODELS_DIR_ENV)
    return Path(root) / kind if root else None


def list_model_files(kind: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files of one model folder kind ("checkpoints", ...), as names relative to that folder."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        return [f for f in folder_paths.get_filename_list(kind) if f.lower().endswith(suffixes)]
    folder = _headless_dir(kind)
    if folder is None or not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in suffixes)


def list_model_folders(kind: str, marker: str) -> list[str]:
    """Sub-folders of one model folder kind that contain `marker` (diffusers models: model_index.json)."""
    folder_paths = _comfy("folder_paths")
    roots = [Path(p) for p in folder_paths.get_folder_paths(kind)] if folder_paths else [_headless_dir(kind)]
    found = []
    for root in roots:
        if root is not None and root.is_dir():
            found += [str(p.parent.relative_to(root)) for p in root.rglob(marker)]
    return sorted(found)


def model_path(kind: str, name: str) -> Path:
    """Full path of a file or folder listed by list_model_files / list_model_folders."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        full = folder_paths.get_full_path(kind, name)
        if full:
            return Path(full)
        for root in folder_paths.get_folder_paths(kind):
            if (Path(root) / name).exists():
                return Path(root) / name
        return Path(name)
    root = _headless_dir(kind)
    return (root / name) if root else Path(name)


def clip_tokenizer_dir() -> Path | None:
    """A CLIP tokenizer folder for single-file checkpoints: ComfyUI's own, or the configured one."""
    configured = os.environ.get(TOKENIZER_ENV)
    if configured:
        return Path(configured)
    comfy = _comfy("comfy")
    if comfy is not None and getattr(comfy, "__file__", None):
        candidate = Path(comfy.__file__).parent / "sd1_tokenizer"
        if candidate.is_dir():
            return candidate
    headless = _headless_dir("clip_tokenizer")
    return headless if headless and headless.is_dir() else None
