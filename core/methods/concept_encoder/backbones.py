"""How E4T's encoder reads its ONE concept image (METHODS.md §1): through a frozen image backbone of the model
service (core/model/image_features.py: the world's VAE, or a CLIP vision model)."""

from __future__ import annotations

import torch

from ...errors import InputError
from ...model import Model
from ...model.image_features import ImageBackbone
from ...model.image_features import backbone_for as service_backbone_for

METHOD_NAME = "the Concept Encoder"


def backbone_for(model: Model, clip_vision: ImageBackbone | None) -> ImageBackbone:
    """The backbone an encoder of `model` reads: the world's VAE, or the CLIP vision model given."""
    return service_backbone_for(model, clip_vision, METHOD_NAME)


def one_rgb_image(image, resolution: int) -> torch.Tensor:
    """The concept image as [1, 3, resolution, resolution] in -1..1: exactly one RGB image (a ComfyUI IMAGE of one,
    an [H, W, 3] tensor or array, or an RGB PIL image); anything else is refused with the fix."""
    import numpy as np
    from PIL import Image

    from ...training import prepare_images

    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            raise InputError(f"the Concept Encoder takes an RGB image; this one is '{image.mode}'. Convert it first "
                             "(PIL: image.convert('RGB'); ComfyUI: drop the alpha or colour the grayscale image).")
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0))
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        raise InputError("the Concept Encoder takes ONE image (a ComfyUI IMAGE, [H, W, 3]).")
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise InputError(f"the Concept Encoder takes ONE image; this batch has {image.shape[0]}. Pick one "
                             "(ComfyUI: Image From Batch), or use Lipschitz Finetune for several images.")
        image = image[0]
    if image.shape[-1] != 3:
        kind = {1: "grayscale", 2: "grayscale with alpha", 4: "RGBA"}.get(int(image.shape[-1]),
                                                                          f"{image.shape[-1]}-channel")
        raise InputError(f"the Concept Encoder takes an RGB image; this one is {kind} ({image.shape[-1]} channels). "
                         "Convert it to RGB first (drop the alpha channel, or colour the grayscale image).")
    return prepare_images([image], resolution)
