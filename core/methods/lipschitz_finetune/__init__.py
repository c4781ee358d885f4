"""Lipschitz Finetune (METHODS.md §4; Kim, Park & Kim, ICLR 2026): personalization fine-tuning whose
parameter-offset penalty bounds the drift away from the base model."""

from .finetune import DEFAULT_LAMBDA, METHOD, TRAINABLES, finetune
from .penalty import NORMS, LipschitzPenalty

__all__ = ["DEFAULT_LAMBDA", "METHOD", "NORMS", "TRAINABLES", "LipschitzPenalty", "finetune"]
