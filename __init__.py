"""ConceptKit: few-shot and personalized text-to-image generation (ComfyUI node pack + library).

ComfyUI loads this folder as a custom node pack and reads the two mappings below. Nothing of
ComfyUI is imported here: the pack also works as the plain Python package `conceptkit`.
"""

from .core.errors import (
    Cancelled,
    ConceptKitError,
    Diverged,
    InputError,
    ModelLoadError,
    UnsafeFileError,
    WorkflowError,
)
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"  # the frontend extension that shows written files on Save/Export nodes

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY", "Cancelled", "ConceptKitError",
           "Diverged", "InputError", "ModelLoadError", "UnsafeFileError", "WorkflowError"]
