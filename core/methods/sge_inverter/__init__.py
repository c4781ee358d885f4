"""SGE Inverter (CRDI, METHODS.md §2): many diverse images of a new domain from a few, without fine-tuning.
`invert` learns sample-wise guidance embeddings (forward passes only); `sample_sge` generates by conditional
relaxing."""

from .generation import DEFAULT_RELAX, RelaxedSGE, sample_sge
from .inversion import (
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_MAPPING,
    DEFAULT_PENALTY,
    DEFAULT_SCALE,
    DEFAULT_SETTLE,
    DEFAULT_STEPS,
    MAX_IMAGES,
    Q_NOISES,
    InvertSettings,
    invert,
)
from .sge import SGESet, load_sge, save_sge, sge_path
from .window import MAPPINGS, Window, map_window

__all__ = ["DEFAULT_EPOCHS", "DEFAULT_LR", "DEFAULT_MAPPING", "DEFAULT_PENALTY", "DEFAULT_RELAX", "DEFAULT_SCALE",
           "DEFAULT_SETTLE", "DEFAULT_STEPS", "MAPPINGS", "MAX_IMAGES", "Q_NOISES", "InvertSettings", "RelaxedSGE",
           "SGESet", "Window", "invert", "load_sge", "map_window", "sample_sge", "save_sge", "sge_path"]
