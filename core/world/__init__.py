"""The world: a procedural, captioned image domain that the embedded model is trained on and that
every method is measured in, exactly, from the generator's ground truth."""

from .scenes import Scene, WorldObject, evaluation_scenes, random_scene, training_batch
from .vocabulary import CAPTION_WORDS, COLOURS, IMAGE_SIZE, PATTERNS, POSITIONS, SHAPES, SIZES

__all__ = [
    "CAPTION_WORDS", "COLOURS", "IMAGE_SIZE", "PATTERNS", "POSITIONS", "SHAPES", "SIZES", "Scene", "WorldObject",
    "evaluation_scenes", "random_scene", "training_batch",
]
