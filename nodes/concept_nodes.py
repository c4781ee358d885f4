"""Using concepts: apply to a model, save, load, and export to the formats ComfyUI and A1111 load."""

from __future__ import annotations

from ..core.concepts import EXPORT_FORMATS, apply_concept, concept_path, export_concept, load_concept, save_concept
from ..core.errors import InputError
from . import comfy_adapter as comfy
from .sockets import CATEGORY, CK_CONCEPT, CK_MODEL, IF_EXISTS

CONCEPTS = "conceptkit_concepts"
NO_CONCEPTS = "(no concepts saved yet)"
EXPORT_FOLDERS = {"kohya_lora": "loras", "embedding": "embeddings", "diffusers": "conceptkit_exports"}


class ConceptKitApplyConcept:
    DESCRIPTION = ("Applies a concept (from a ConceptKit trainer or Load Concept) to a model. The base model is not "
                   "copied or changed: the concept takes effect only where the returned model is used.")
    CATEGORY = f"{CATEGORY}/concepts"
    RETURN_TYPES = (CK_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the concept; write its trigger word in prompts.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (CK_MODEL, {"tooltip": "The model the concept was trained for (same family)."}),
            "concept": (CK_CONCEPT, {"tooltip": "The concept to apply."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05,
                                   "tooltip": "How strongly the concept's weight changes apply (1 = as trained, "
                                              "0 = off). The trigger word keeps its learned vector."}),
        }}

    def apply(self, model, concept, strength):
        return (apply_concept(model, concept, strength),)


class ConceptKitSaveConcept:
    DESCRIPTION = ("Saves a concept as one .safetensors file (weights + what it was made for) in ComfyUI's "
                   "models/conceptkit/concepts folder, where Load Concept finds it.")
    CATEGORY = f"{CATEGORY}/concepts"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "concept": (CK_CONCEPT, {"tooltip": "The concept to save."}),
            "name": ("STRING", {"default": "my_concept", "tooltip": "File name (letters, digits, - _ .); "
                                "no folders."}),
            "if_exists": IF_EXISTS,
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, name):
        """Checked before anything in the prompt runs, so a bad name never costs a training run."""
        return comfy.valid_file_name(name, "concept name")

    def save(self, concept, name, if_exists):
        path = save_concept(concept, concept_path(comfy.writable_folder(CONCEPTS), name), if_exists)
        return comfy.written_file_result(path, "concept")


class ConceptKitLoadConcept:
    DESCRIPTION = "Loads a concept file saved by Save Concept (safetensors only)."
    CATEGORY = f"{CATEGORY}/concepts"
    RETURN_TYPES = (CK_CONCEPT,)
    RETURN_NAMES = ("concept",)
    OUTPUT_TOOLTIPS = ("The concept, for Apply Concept or Export Concept.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "concept_name": (comfy.list_model_files(CONCEPTS, (".safetensors",)) or [NO_CONCEPTS], {
                "tooltip": "A concept file in models/conceptkit/concepts."}),
        }}

    def load(self, concept_name):
        if concept_name == NO_CONCEPTS:
            raise InputError("there are no concept files in models/conceptkit/concepts yet; save one with "
                             "Save Concept first (or copy a ConceptKit .safetensors concept there).")
        return (load_concept(comfy.model_path(CONCEPTS, concept_name)),)


class ConceptKitExportConcept:
    DESCRIPTION = ("Exports a concept to what other tools load: a kohya LoRA into ComfyUI's loras folder (Load LoRA, "
                   "A1111, diffusers), a textual-inversion embedding into embeddings (use it as "
                   "'embedding:NAME' in a prompt), or a diffusers folder.")
    CATEGORY = f"{CATEGORY}/concepts"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "export"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (CK_MODEL, {"tooltip": "The base model the concept was trained for (it names the layers)."}),
            "concept": (CK_CONCEPT, {"tooltip": "The concept to export."}),
            "format": (list(EXPORT_FORMATS), {"default": "kohya_lora", "tooltip": "kohya_lora: LoRA concepts; "
                       "embedding: the trigger's learned vector; diffusers: a folder for diffusers pipelines."}),
            "name": ("STRING", {"default": "my_concept", "tooltip": "File or folder name (no folders)."}),
            "if_exists": IF_EXISTS,
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, name):
        return comfy.valid_file_name(name, "export name")

    def export(self, model, concept, format, name, if_exists):  # noqa: A002 - ComfyUI input name
        if format not in EXPORT_FOLDERS:
            raise InputError(f"format '{format}' is not one of {', '.join(EXPORT_FORMATS)}.")
        path = export_concept(concept, model, format, comfy.writable_folder(EXPORT_FOLDERS[format]), name, if_exists)
        return comfy.written_file_result(path, f"{format} export")
