"""The baselines every personalization method is measured against, as recipes over the training service:
- dreambooth_lora / dreambooth_full: DreamBooth (LoRA, or the whole UNet) without any regularizer;
- dreambooth_prior / dreambooth_full_prior: the same with prior preservation on class images the base model
  makes (generated once per model, prompts and seed, and cached as PNGs);
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

from ..errors import InputError
from ..files import atomic_write, make_folder
from ..model import Model
from ..sampling import CFG, sample
from ..training import (
    ImageReplay,
    LossTerm,
    TrainConfig,
    TrainResult,
    class_captions,
    instance_captions,
    prepare_images,
    train_concept,
)
from ..training.images import load_image_file

RECIPES = ("dreambooth_lora", "dreambooth_full", "dreambooth_prior", "dreambooth_full_prior", "textual_inversion")
PRIOR_RECIPES = ("dreambooth_prior", "dreambooth_full_prior")
CLASS_IMAGE_STEPS, CLASS_IMAGE_CFG = 25, 5.0


def recipe_config(recipe: str, base: TrainConfig) -> TrainConfig:
    """The training settings of `recipe`, starting from `base` (the user's trigger, steps, lr, ...)."""
    if recipe not in RECIPES:
        raise InputError(f"recipe '{recipe}' is not one of {', '.join(RECIPES)}.")
    if recipe == "textual_inversion":
        return dataclasses.replace(base, method=recipe, trainable="embedding")
    if recipe in ("dreambooth_full", "dreambooth_full_prior"):
        return dataclasses.replace(base, method=recipe, trainable="full")
    return dataclasses.replace(base, method=recipe, trainable="lora")


def class_images(model: Model, prompts: list[str], seed: int, cache_dir: Path | None,
                 progress=None, cancel=None) -> torch.Tensor:
    """Images of the class prompts drawn by the base model ([N, H, W, 3] in 0..1, 8 bits as stored), cached as
    PNGs keyed by the model, the prompts and the seed, so prior preservation pays for them once (and trains on
    the same pixels whether it made them or read them)."""
    key = hashlib.sha256(json.dumps([model.fingerprint(), prompts, seed, CLASS_IMAGE_STEPS, CLASS_IMAGE_CFG])
                         .encode()).hexdigest()[:16]
    folder = Path(cache_dir) / key if cache_dir is not None else None
    files = [folder / f"{i:04d}.png" for i in range(len(prompts))] if folder else []
    if files and all(f.is_file() for f in files):
        return torch.cat([load_image_file(f)[0] for f in files])
    drawn = sample(model, prompts, seed=seed, steps=CLASS_IMAGE_STEPS, guidance=CFG(CLASS_IMAGE_CFG),
                   progress=progress, cancel=cancel).images
    stored = (drawn.numpy() * 255).round().astype(np.uint8)
    if folder is not None:
        make_folder(folder)
        for f, pixels in zip(files, stored, strict=True):
            atomic_write(f, lambda out, p=pixels: Image.fromarray(p).save(out, format="PNG"), if_exists="overwrite")
    return torch.from_numpy(stored).float() / 255


def prior_preservation(model: Model, images, config: TrainConfig, weight: float, count: int,
                       cache_dir: Path | None, cancel=None) -> ImageReplay:
    """The prior-preservation term: `count` class images for the instance captions without the trigger."""
    n = len(prepare_images(images, model.default_size))
    prompts = class_captions(instance_captions(config, n), config)
    prompts = [prompts[i % len(prompts)] for i in range(count)]
    made = class_images(model, prompts, config.seed + 7919, cache_dir, cancel=cancel)
    return ImageReplay(made.permute(0, 3, 1, 2) * 2 - 1, prompts, weight, name="prior_preservation")


def train_recipe(
    model: Model,
    images,
    config: TrainConfig,
    recipe: str,
    *,
    prior_weight: float = 1.0,
    class_image_count: int = 16,
    class_cache_dir: Path | None = None,
    loss_terms: list[LossTerm] = (),
    **train_options,
) -> TrainResult:
    """Personalize `model` on `images` with one of RECIPES (plus any `loss_terms`)."""
    config = recipe_config(recipe, config)
    terms = list(loss_terms)
    if recipe in PRIOR_RECIPES:
        terms.append(prior_preservation(model, images, config, prior_weight, class_image_count, class_cache_dir,
                                        cancel=train_options.get("cancel")))
        config = dataclasses.replace(config, parameters={**config.parameters, "prior_weight": prior_weight,
                                                         "class_images": class_image_count})
    return train_concept(model, images, config, terms, **train_options)
