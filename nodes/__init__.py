"""ComfyUI nodes: a thin skin over core. One module per capability."""

from .comfy_bridge_nodes import ConceptKitModelFromComfy
from .model_nodes import ConceptKitLoadModel
from .sampling_nodes import ConceptKitSample

NODE_CLASS_MAPPINGS = {
    "ConceptKitLoadModel": ConceptKitLoadModel,
    "ConceptKitSample": ConceptKitSample,
    "ConceptKitModelFromComfy": ConceptKitModelFromComfy,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ConceptKitLoadModel": "ConceptKit Load Model",
    "ConceptKitSample": "ConceptKit Sample",
    "ConceptKitModelFromComfy": "ConceptKit Model From Comfy",
}
