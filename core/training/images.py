"""The few images a concept is learned from: checked, made square RGB at the model's size, augmented.

Accepted: a ComfyUI IMAGE batch ([B, H, W, C] floats in 0..1), a list of such tensors or of [H, W, C]
tensors of different sizes, numpy arrays, or PIL images. Handled, as documented in the README:
RGBA -> RGB (alpha composited on white), grayscale -> RGB, any size -> centre square crop resized to
the model's resolution. Refused with a message: no images, images smaller than MIN_SIDE, NaN/inf values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..errors import InputError

MIN_SIDE = 16
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # what image folders are read for


def _as_hwc(image, index: int) -> torch.Tensor:
    if isinstance(image, Image.Image):
        image = torch.from_numpy(_rgba_floats(image))
    elif isinstance(image, np.ndarray):
        if image.dtype == np.bool_:
            image = image.astype(np.float32)
        elif np.issubdtype(image.dtype, np.integer):  # 8-bit by 255, 16-bit by 65535: each by its own range
            image = image.astype(np.float32) / np.iinfo(image.dtype).max
        elif not np.issubdtype(image.dtype, np.floating):
            raise InputError(f"image {index + 1} is a numpy array of {image.dtype}; give numbers (uint8, uint16 or "
                             "floats in 0..1).")
        image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    if not isinstance(image, torch.Tensor):
        raise InputError(f"image {index + 1} is a {type(image).__name__}; give images as a ComfyUI IMAGE, "
                         "tensors, numpy arrays or PIL images.")
    image = image.detach().float().cpu()
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"image {index + 1} has shape {tuple(image.shape)}; expected height x width x channels "
                         "(1, 3 or 4 channels).")
    return image


def _to_rgb(image: torch.Tensor) -> torch.Tensor:
    channels = image.shape[-1]
    if channels in (2, 4):  # with alpha: composite on white
        alpha = image[..., -1:]
        colour = image[..., :-1]
        image = colour * alpha + (1 - alpha)
        channels -= 1
    return image.expand(*image.shape[:2], 3) if channels == 1 else image


def prepare_images(images, resolution: int) -> torch.Tensor:
    """[N, 3, resolution, resolution] in -1..1 (what the VAE encodes)."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        images = list(images)
    images = list(images) if images is not None else []
    if not images:
        raise InputError("no images were given; connect at least one image of the subject (3-6 work best).")
    prepared = []
    for i, raw in enumerate(images):
        image = _as_hwc(raw, i)
        height, width = image.shape[:2]
        if min(height, width) < MIN_SIDE:
            raise InputError(f"image {i + 1} is {width}x{height} pixels; images must be at least {MIN_SIDE}x{MIN_SIDE} "
                             f"(the model works at {resolution}x{resolution}).")
        if not torch.isfinite(image).all():
            raise InputError(f"image {i + 1} contains NaN or infinite values; check the node that produced it.")
        image = _to_rgb(image.clamp(0, 1)).permute(2, 0, 1)
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        square = image[:, top:top + side, left:left + side][None]
        prepared.append(F.interpolate(square, size=(resolution, resolution), mode="bilinear", antialias=True,
                                      align_corners=False)[0])
    return torch.stack(prepared) * 2 - 1


def augment(images: torch.Tensor, generator: torch.Generator, min_scale: float = 0.85, flip: bool = False):
    """Random zoom-in crops (scale min_scale..1 of the side, random place), resized back; optional mirror."""
    n, _, size, _ = images.shape
    out = []
    for image in images:
        scale = min_scale + (1 - min_scale) * torch.rand((), generator=generator).item()
        side = max(1, round(size * scale))
        top, left = (torch.randint(0, size - side + 1, (2,), generator=generator)).tolist()
        crop = image[None, :, top:top + side, left:left + side]
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]
        if flip and torch.rand((), generator=generator).item() < 0.5:
            crop = crop.flip(-1)
        out.append(crop)
    return torch.stack(out)


def load_image_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(IMAGE [1,H,W,3], MASK [1,H,W]) as ComfyUI's LoadImage gives them."""
    try:
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened)
            array = _rgba_floats(img)
    except Image.DecompressionBombError:
        raise InputError(f"{path}: the image is too large to open safely (over {Image.MAX_IMAGE_PIXELS} "
                         "pixels); scale it down first.") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable image ({e}); replace the file or remove it.") from None
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
