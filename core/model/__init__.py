"""The model service: one loaded text-to-image model, whatever it was loaded from."""

from .family import FAMILY_NAMES
from .loading import EMBEDDED, load_ldm_state_dict, load_model
from .model import Model

__all__ = ["EMBEDDED", "FAMILY_NAMES", "Model", "load_ldm_state_dict", "load_model"]
