"""The training service: one few-shot training loop with pluggable loss terms and trainable sets."""

from .images import prepare_images
from .loop import TrainConfig, TrainResult, class_captions, instance_captions, loss_curve, train_concept
from .losses import LipschitzPenalty, LossTerm, PriorPreservation
from .trainable import TRAINABLE_KINDS

__all__ = ["TRAINABLE_KINDS", "LipschitzPenalty", "LossTerm", "PriorPreservation", "TrainConfig", "TrainResult",
           "class_captions", "instance_captions", "loss_curve", "prepare_images", "train_concept"]
