"""Metrics: exact world metrics (from the generator's ground truth) and real-model metrics
(CLIP-T, CLIP-I, DINO) computed with transformers from weights the user has locally."""

from .cost import measure_cost, measure_tensor_memory
from .features import diversity, frechet_distance

__all__ = ["diversity", "frechet_distance", "measure_cost", "measure_tensor_memory"]
