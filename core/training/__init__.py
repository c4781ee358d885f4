"""The training service: one engine that owns a training run (resume, Cancel, checkpoints, progress,
accelerate), the few-shot loop on it with its objective, data sources, loss terms and trainable sets."""

from .curves import loss_curve
from .data import DataSource, FewShotImages, Stream
from .engine import DEFAULT_PREVIEW_SHARE, PreviewBudget, RunOutcome, RunSettings, TrainingEngine, step_generator
from .fewshot import (
    MIXED_PRECISION,
    TrainConfig,
    TrainingRun,
    TrainResult,
    caption_lines,
    class_captions,
    fill_template,
    first_caption,
    instance_captions,
    run_identity,
    settings_signature,
    train_concept,
)
from .images import prepare_images
from .losses import OFFSET_NORMS, LossTerm, OffsetPenalty, PriorPreservation
from .objective import Batch, DenoisingObjective, Noised
from .trainable import TrainableSet, register_trainable, trainable_kinds

__all__ = ["DEFAULT_PREVIEW_SHARE", "MIXED_PRECISION", "Batch", "DataSource", "DenoisingObjective", "FewShotImages",
           "LossTerm", "Noised", "OFFSET_NORMS", "OffsetPenalty", "PreviewBudget", "PriorPreservation", "RunOutcome",
           "RunSettings", "Stream", "TrainConfig", "TrainResult", "TrainableSet", "TrainingEngine", "TrainingRun",
           "caption_lines", "class_captions", "first_caption", "fill_template", "instance_captions", "loss_curve",
           "prepare_images", "register_trainable", "run_identity", "settings_signature", "step_generator",
           "train_concept", "trainable_kinds"]
