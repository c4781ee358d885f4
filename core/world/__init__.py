"""The world: a procedural, captioned image domain that the embedded model is trained on and that
every method is measured in, exactly, from the generator's ground truth."""

from .scenes import Scene, WorldObject, evaluation_scenes, random_scene, style_renders, training_batch
from .subjects import training_renders
from .vocabulary import (
    CAPTION_WORDS,
    COLOURS,
    FAIR_DOMAINS,
    HELDOUT_DOMAINS,
    HELDOUT_INSTANCE_SEEDS,
    HELDOUT_STYLE,
    IMAGE_SIZE,
    PATTERNS,
    POSITIONS,
    SHAPES,
    SIZES,
)

__all__ = ["CAPTION_WORDS", "COLOURS", "FAIR_DOMAINS", "HELDOUT_DOMAINS", "HELDOUT_INSTANCE_SEEDS", "HELDOUT_STYLE",
           "IMAGE_SIZE", "PATTERNS", "POSITIONS", "SHAPES", "SIZES", "Scene", "WorldObject", "evaluation_scenes",
           "random_scene", "style_renders", "training_batch", "training_renders"]
