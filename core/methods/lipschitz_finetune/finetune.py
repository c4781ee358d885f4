"""Lipschitz Finetune: DreamBooth-style fine-tuning (LoRA by default; attention-only or full UNet) with the
parameter-offset penalty lambda * sum ||theta - theta0||^2 (Frobenius or spectral) instead of prior
preservation, so no class images are generated."""

from __future__ import annotations

import dataclasses

from ...model import Model
from ...training import OffsetPenalty, TrainConfig, TrainResult, train_concept

METHOD = "lipschitz"
TRAINABLES = ("lora", "attention", "full")  # what it fine-tunes (the penalty bounds each)
DEFAULT_LAMBDA = 3e-5  # chosen by `conceptkit bench finetune_lambda` (README)


def finetune(
    model: Model,
    images,
    config: TrainConfig,
    *,
    lipschitz_lambda: float = DEFAULT_LAMBDA,
    norm: str = "frobenius",
    **train_options,
) -> TrainResult:
    """Personalize `model` on `images` (what trains: `config.trainable`); returns the concept and the losses."""
    config = dataclasses.replace(config, method=METHOD,
                                 parameters={**config.parameters, "lambda": lipschitz_lambda, "norm": norm})
    penalty = OffsetPenalty(lipschitz_lambda, norm, name="lipschitz_penalty")
    return train_concept(model, images, config, [penalty], **train_options)
