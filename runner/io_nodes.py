"""Stand-ins for ComfyUI's LoadImage, SaveImage and PreviewImage, for running workflows headless.

They take the same inputs as ComfyUI's nodes, so workflow files work in both places.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..core.errors import InputError
from ..core.files import atomic_write, guarded, make_folder
from ..core.training.images import IMAGE_SUFFIXES, load_image_file
from ..nodes.inputs import checked_inputs


def io_nodes(input_dir: Path, output_dir: Path, workflow: dict | None = None) -> dict[str, type]:
    """Node classes bound to this run's input and output folders."""

    class LoadImage:
        DESCRIPTION = "Loads an image file from the input folder (headless stand-in for ComfyUI's LoadImage)."
        CATEGORY = "image"
        RETURN_TYPES = ("IMAGE", "MASK")
        FUNCTION = "load_image"

        @classmethod
        def INPUT_TYPES(cls):
            with guarded(Path(input_dir), "list the input folder"):
                files = sorted(p.name for p in Path(input_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
                    if Path(input_dir).is_dir() else []
            return {"required": {"image": (files, {"image_upload": True, "tooltip": "An image in the input folder."})}}

        def load_image(self, image: str):
            return load_image_file(Path(input_dir) / image)

    class SaveImage:
        DESCRIPTION = "Saves images as PNG files in the output folder, with the workflow in the PNG metadata."
        CATEGORY = "image"
        RETURN_TYPES = ()
        OUTPUT_NODE = True
        FUNCTION = "save_images"
        subfolder = ""

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {
                "images": ("IMAGE", {"tooltip": "The images to save."}),
                "filename_prefix": ("STRING", {"default": "ConceptKit", "tooltip": "Start of the file names."}),
            }}

        @classmethod
        def VALIDATE_INPUTS(cls, filename_prefix):
            return plain_prefix(filename_prefix)

        def save_images(self, images: torch.Tensor, filename_prefix: str = "ConceptKit"):
            saved = save_png_batch(images, Path(output_dir), self.subfolder, filename_prefix, workflow)
            return {"ui": {"images": saved}}

    class PreviewImage(SaveImage):
        DESCRIPTION = "Shows images (headless: writes them to the output folder's 'preview' subfolder)."
        subfolder = "preview"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"images": ("IMAGE", {"tooltip": "The images to preview."})}}

        def save_images(self, images: torch.Tensor, filename_prefix: str = "preview"):
            return super().save_images(images, filename_prefix)

    nodes = {"LoadImage": LoadImage, "SaveImage": SaveImage, "PreviewImage": PreviewImage}
    for node_class in nodes.values():
        checked_inputs(node_class)
    return nodes


def plain_prefix(prefix: str) -> bool | str:
    """True, or why `prefix` cannot start a file name in the output folder."""
    if "/" in prefix or "\\" in prefix or prefix.strip() in ("", ".", "..") or "\x00" in prefix:
        return f"filename_prefix {prefix!r} must be a plain name without folders or NUL characters."
    return True


def save_png_batch(images: torch.Tensor, root: Path, subfolder: str, prefix: str, workflow: dict | None) -> list[dict]:
    if (problem := plain_prefix(prefix)) is not True:
        raise InputError(problem)
    folder = make_folder(Path(root) / subfolder)
    with guarded(folder, "list the output folder"):
        taken = {p.name for p in folder.glob(f"{prefix}_*.png")}
    counter = len(taken) + 1
    saved = []
    for image in images:
        info = PngInfo()
        if workflow is not None:
            info.add_text("workflow", json.dumps(workflow))
        pixels = (image.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        while True:  # ComfyUI's names; a name another process took meanwhile is skipped, never overwritten
            name = f"{prefix}_{counter:05d}_.png"
            counter += 1
            if name in taken:
                continue
            try:
                atomic_write(folder / name, lambda f, p=pixels, i=info: Image.fromarray(p).save(f, format="PNG",
                                                                                                  pnginfo=i))
                break
            except InputError:
                if not (folder / name).exists():
                    raise
        saved.append({"filename": name, "subfolder": subfolder, "type": "output", "path": str(folder / name)})
    return saved
