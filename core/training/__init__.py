"""The training service: a training run (`TrainingRun`: resume, Cancel, checkpoints, progress, previews,
accelerate, what trains, its data, objective and loss terms) and the recipe most trainings share on it, learning a
personal concept (`train_concept`)."""

from .concept import (
    DEFAULT_TEMPLATES,
    Companion,
    TrainConfig,
    TrainResult,
    caption_lines,
    check_trigger,
    class_captions,
    fill_template,
    first_caption,
    identifier,
    instance_captions,
    keep_result,
    kept_result,
    settings_signature,
    subject_configs,
    token_and_weight_optimizer,
    train_concept,
)
from .curves import loss_curve
from .data import DataSource, FewShotImages, Stream
from .engine import DEFAULT_PREVIEW_SHARE, PreviewBudget, RunOutcome, RunSettings, TrainingEngine, step_generator
from .images import prepare_images
from .losses import OFFSET_NORMS, ImageReplay, LossTerm, OffsetPenalty
from .objective import Batch, DenoisingObjective, Noised, Posterior, Rider, encode_posterior, ride_alone
from .run import MIXED_PRECISION, RunFolder, RunHooks, StepSettings, TrainingRun, training_mode
from .trainable import TrainableSet, trainable_kinds

__all__ = ["Batch", "Companion", "DEFAULT_PREVIEW_SHARE", "DEFAULT_TEMPLATES", "DataSource", "DenoisingObjective",
           "FewShotImages", "ImageReplay", "LossTerm", "MIXED_PRECISION", "Noised", "OFFSET_NORMS", "OffsetPenalty",
           "Posterior", "PreviewBudget", "Rider", "RunFolder", "RunHooks", "RunOutcome", "RunSettings", "StepSettings",
           "Stream", "TrainConfig", "TrainResult", "TrainableSet", "TrainingEngine", "TrainingRun", "caption_lines",
           "check_trigger", "class_captions", "encode_posterior", "fill_template", "first_caption", "identifier",
           "instance_captions", "keep_result", "kept_result", "loss_curve", "prepare_images", "ride_alone",
           "settings_signature", "step_generator", "subject_configs", "token_and_weight_optimizer", "train_concept",
           "trainable_kinds", "training_mode"]
