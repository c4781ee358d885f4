"""Lipschitz Finetune (METHODS.md §4; Kim, Park & Kim, ICLR 2026): personalization fine-tuning whose
parameter-offset penalty (the training service's OffsetPenalty) bounds the drift away from the base model."""

from .finetune import DEFAULT_LAMBDA, METHOD, TRAINABLES, finetune

__all__ = ["DEFAULT_LAMBDA", "METHOD", "TRAINABLES", "finetune"]
