"""Lipschitz Finetune (METHODS.md §4) and the baselines it is measured against, as recipes over the one
training service: what trains, which loss terms are added, and the settings each method uses.

- lipschitz: DreamBooth-style fine-tuning (LoRA by default; attention-only or full UNet) with the
  parameter-offset penalty lambda * sum ||theta - theta0||^2 (Frobenius or spectral) instead of
  prior preservation, so no class images are generated;
- dreambooth_lora / dreambooth_full: the same without any regularizer;
- dreambooth_prior / dreambooth_full_prior: DreamBooth (LoRA / full) with prior preservation on class
  images the base model makes (generated once per model, prompts and seed, and cached as PNGs);
- textual_inversion: only the trigger token's vector trains, starting from the class word's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import InputError
from .files import atomic_write
from .model import Model
from .sampling import CFG, sample
from .training import (
    LipschitzPenalty,
    PriorPreservation,
    TrainConfig,
    TrainResult,
    class_captions,
    instance_captions,
    prepare_images,
    train_concept,
)

METHODS = ("lipschitz", "dreambooth_lora", "dreambooth_full", "dreambooth_prior", "dreambooth_full_prior",
           "textual_inversion")
PRIOR_METHODS = ("dreambooth_prior", "dreambooth_full_prior")
DEFAULT_LAMBDA = 3e-5  # chosen by `conceptkit bench finetune_lambda` (README)
CLASS_IMAGE_STEPS, CLASS_IMAGE_CFG = 25, 5.0


def method_config(method: str, base: TrainConfig) -> TrainConfig:
    """The training settings of `method`, starting from `base` (the user's trigger, steps, lr, ...)."""
    if method not in METHODS:
        raise InputError(f"method '{method}' is not one of {', '.join(METHODS)}.")
    if method == "textual_inversion":
        return dataclasses.replace(base, method=method, trainable="embedding", token_init="class")
    if method in ("dreambooth_full", "dreambooth_full_prior"):
        return dataclasses.replace(base, method=method, trainable="full")
    if method in ("dreambooth_lora", "dreambooth_prior"):
        return dataclasses.replace(base, method=method, trainable="lora")
    return dataclasses.replace(base, method=method)


def class_images(model: Model, prompts: list[str], seed: int, cache_dir: Path | None,
                 progress=None, cancel=None) -> torch.Tensor:
    """Images of the class prompts drawn by the base model ([N, H, W, 3] in 0..1), cached as PNGs keyed by
    the model, the prompts and the seed, so prior preservation pays for them once."""
    key = hashlib.sha256(json.dumps([model.fingerprint(), prompts, seed, CLASS_IMAGE_STEPS, CLASS_IMAGE_CFG])
                         .encode()).hexdigest()[:16]
    folder = Path(cache_dir) / key if cache_dir is not None else None
    files = [folder / f"{i:04d}.png" for i in range(len(prompts))] if folder else []
    if files and all(f.is_file() for f in files):
        return torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])).float() / 255
    images = sample(model, prompts, seed=seed, steps=CLASS_IMAGE_STEPS, guidance=CFG(CLASS_IMAGE_CFG),
                    progress=progress, cancel=cancel).images
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for f, image in zip(files, images, strict=True):
            pixels = (image.numpy() * 255).round().astype(np.uint8)
            atomic_write(f, lambda out, p=pixels: Image.fromarray(p).save(out, format="PNG"), overwrite=True)
    return images


def finetune(
    model: Model,
    images,
    config: TrainConfig,
    *,
    method: str = "lipschitz",
    lipschitz_lambda: float = DEFAULT_LAMBDA,
    norm: str = "frobenius",
    prior_weight: float = 1.0,
    class_image_count: int = 16,
    class_cache_dir: Path | None = None,
    **train_options,
) -> TrainResult:
    """Personalize `model` on `images` with one of METHODS; returns the concept and the loss per step."""
    config = method_config(method, config)
    terms = []
    if method == "lipschitz":
        terms.append(LipschitzPenalty(lipschitz_lambda, norm))
        config = dataclasses.replace(config, parameters={**config.parameters, "lambda": lipschitz_lambda,
                                                         "norm": norm})
    if method in PRIOR_METHODS:
        count = len(prepare_images(images, model.default_size))
        prompts = class_captions(instance_captions(config, count), config.trigger)
        prompts = [prompts[i % len(prompts)] for i in range(class_image_count)]
        made = class_images(model, prompts, config.seed + 7919, class_cache_dir,
                            cancel=train_options.get("cancel"))
        terms.append(PriorPreservation(made.permute(0, 3, 1, 2) * 2 - 1, prompts, prior_weight))
        config = dataclasses.replace(config, parameters={**config.parameters, "prior_weight": prior_weight,
                                                         "class_images": class_image_count})
    return train_concept(model, images, config, terms, **train_options)
