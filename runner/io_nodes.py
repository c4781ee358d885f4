"""Stand-ins for ComfyUI's LoadImage, SaveImage and PreviewImage, for running workflows headless.

They take the same inputs as ComfyUI's nodes, so workflow files work in both places.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from ..core.errors import InputError
from ..core.files import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def io_nodes(input_dir: Path, output_dir: Path, workflow: dict | None = None) -> dict[str, type]:
    """Node classes bound to this run's input and output folders."""

    class LoadImage:
        DESCRIPTION = "Loads an image file from the input folder (headless stand-in for ComfyUI's LoadImage)."
        CATEGORY = "image"
        RETURN_TYPES = ("IMAGE", "MASK")
        FUNCTION = "load_image"

        @classmethod
        def INPUT_TYPES(cls):
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

    return {"LoadImage": LoadImage, "SaveImage": SaveImage, "PreviewImage": PreviewImage}


def load_image_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(IMAGE [1,H,W,3], MASK [1,H,W]) as ComfyUI's LoadImage gives them."""
    try:
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened)
            array = _rgba_floats(img)
    except Image.DecompressionBombError:
        raise InputError(f"{path.name}: the image is too large to open safely (over {Image.MAX_IMAGE_PIXELS} "
                         "pixels); scale it down first.") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path.name}: not a readable image ({e}).") from None
    image = torch.from_numpy(array[..., :3].copy())[None]
    mask = 1.0 - torch.from_numpy(array[..., 3].copy())[None]
    return image, mask


SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _rgba_floats(img: Image.Image) -> np.ndarray:
    """[H, W, 4] in 0..1; 16-bit images by their own range (Pillow's RGB conversion would clip them to white)."""
    if img.mode in SIXTEEN_BIT:
        grey = np.asarray(img, dtype=np.float32) / 65535.0
        return np.concatenate([np.repeat(np.clip(grey, 0, 1)[..., None], 3, -1), np.ones((*grey.shape, 1),
                                                                                         np.float32)], -1)
    return np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0


def save_png_batch(images: torch.Tensor, root: Path, subfolder: str, prefix: str, workflow: dict | None) -> list[dict]:
    if "/" in prefix or "\\" in prefix or prefix in ("", ".", ".."):
        raise InputError(f"filename_prefix '{prefix}' must be a plain name without folders.")
    folder = Path(root) / subfolder
    folder.mkdir(parents=True, exist_ok=True)
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
