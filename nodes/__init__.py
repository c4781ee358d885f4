"""ComfyUI nodes: a thin skin over core. One module per method (and per shared capability: models, sampling,
concept files, the world)."""

from .comfy_adapter import warn_missing_dependencies
from .comfy_bridge_nodes import ConceptKitModelFromComfy
from .concept_nodes import ConceptKitApplyConcept, ConceptKitExportConcept, ConceptKitLoadConcept, ConceptKitSaveConcept
from .encoder_nodes import ConceptKitConceptEncoder, ConceptKitLoadConceptEncoder, ConceptKitPretrainConceptEncoder
from .finetune_nodes import ConceptKitLipschitzFinetune, ConceptKitSubject
from .guidance_nodes import ConceptKitPersonalizationGuidanceSampler
from .inputs import checked_inputs
from .memory_nodes import ConceptKitApplyMemory, ConceptKitConceptMemory, ConceptKitExportMemory, ConceptKitMemoryLearn
from .model_nodes import ConceptKitLoadModel
from .sampling_nodes import ConceptKitSample
from .sge_nodes import (
    ConceptKitLoadSGE,
    ConceptKitSaveSGE,
    ConceptKitSGEInverter,
    ConceptKitSGESample,
)
from .world_nodes import ConceptKitWorldDomain, ConceptKitWorldSubject

NODE_CLASS_MAPPINGS = {
    "ConceptKitLoadModel": ConceptKitLoadModel,
    "ConceptKitSample": ConceptKitSample,
    "ConceptKitModelFromComfy": ConceptKitModelFromComfy,
    "ConceptKitLipschitzFinetune": ConceptKitLipschitzFinetune,
    "ConceptKitSubject": ConceptKitSubject,
    "ConceptKitPersonalizationGuidanceSampler": ConceptKitPersonalizationGuidanceSampler,
    "ConceptKitApplyConcept": ConceptKitApplyConcept,
    "ConceptKitSaveConcept": ConceptKitSaveConcept,
    "ConceptKitLoadConcept": ConceptKitLoadConcept,
    "ConceptKitExportConcept": ConceptKitExportConcept,
    "ConceptKitWorldSubject": ConceptKitWorldSubject,
    "ConceptKitLoadConceptEncoder": ConceptKitLoadConceptEncoder,
    "ConceptKitConceptEncoder": ConceptKitConceptEncoder,
    "ConceptKitPretrainConceptEncoder": ConceptKitPretrainConceptEncoder,
    "ConceptKitWorldDomain": ConceptKitWorldDomain,
    "ConceptKitSGEInverter": ConceptKitSGEInverter,
    "ConceptKitSGESample": ConceptKitSGESample,
    "ConceptKitSaveSGE": ConceptKitSaveSGE,
    "ConceptKitLoadSGE": ConceptKitLoadSGE,
    "ConceptKitConceptMemory": ConceptKitConceptMemory,
    "ConceptKitMemoryLearn": ConceptKitMemoryLearn,
    "ConceptKitApplyMemory": ConceptKitApplyMemory,
    "ConceptKitExportMemory": ConceptKitExportMemory,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ConceptKitLoadModel": "ConceptKit Load Model",
    "ConceptKitSample": "ConceptKit Sample",
    "ConceptKitModelFromComfy": "ConceptKit Model From Comfy",
    "ConceptKitLipschitzFinetune": "Lipschitz Finetune",
    "ConceptKitSubject": "ConceptKit Subject",
    "ConceptKitPersonalizationGuidanceSampler": "Personalization Guidance Sampler",
    "ConceptKitApplyConcept": "ConceptKit Apply Concept",
    "ConceptKitSaveConcept": "ConceptKit Save Concept",
    "ConceptKitLoadConcept": "ConceptKit Load Concept",
    "ConceptKitExportConcept": "ConceptKit Export Concept",
    "ConceptKitWorldSubject": "ConceptKit World Subject",
    "ConceptKitLoadConceptEncoder": "ConceptKit Load Concept Encoder",
    "ConceptKitConceptEncoder": "Concept Encoder",
    "ConceptKitPretrainConceptEncoder": "Pretrain Concept Encoder",
    "ConceptKitWorldDomain": "ConceptKit World Domain",
    "ConceptKitSGEInverter": "SGE Inverter",
    "ConceptKitSGESample": "SGE Sample",
    "ConceptKitSaveSGE": "ConceptKit Save SGE",
    "ConceptKitLoadSGE": "ConceptKit Load SGE",
    "ConceptKitConceptMemory": "Concept Memory",
    "ConceptKitMemoryLearn": "Memory Learn",
    "ConceptKitApplyMemory": "Apply Memory",
    "ConceptKitExportMemory": "ConceptKit Export Memory",
}

for _node_class in NODE_CLASS_MAPPINGS.values():  # a scripted call is checked as a queued graph is
    checked_inputs(_node_class)

warn_missing_dependencies()
