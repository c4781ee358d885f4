"""Concept Memory (L2DM): open or create a memory, learn concepts into it one after another, apply all of them."""

from __future__ import annotations

from ..core.errors import InputError
from ..core.methods.concept_memory import (
    DEFAULT_ACTIVE_SHARE,
    DEFAULT_STEP_SIZE,
    DEFAULT_TRAINS,
    IF_LEARNED,
    LEARNING_RATES,
    TRAINS,
    LearnSettings,
    MemoryStore,
    export_memory,
    learn,
    memory_model,
)
from ..core.recipes import TrainingPreview
from ..core.training import caption_lines
from . import comfy_adapter as comfy
from .encoder_nodes import comfy_backbone
from .sockets import CATEGORY, CK_MEMORY, CK_MODEL, IF_EXISTS, TRAINING_SEED

MEMORIES = "conceptkit_memories"


class ConceptKitConceptMemory:
    DESCRIPTION = ("Concept Memory (L2DM; Sun et al., TPAMI 2024): opens a memory by name, or creates an empty one "
                   "for this model, in models/conceptkit/memories. A memory learns concepts one after another "
                   "(Memory Learn) without forgetting the earlier ones, and draws several in one image (Apply "
                   "Memory). Every learned concept is a new version; a crash never loses the last one.")
    CATEGORY = f"{CATEGORY}/memory"
    RETURN_TYPES = (CK_MEMORY,)
    RETURN_NAMES = ("memory",)
    OUTPUT_TOOLTIPS = ("The memory, for Memory Learn and Apply Memory.",)
    FUNCTION = "open"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (CK_MODEL, {"tooltip": "The model the memory is for (a memory only fits the model it was "
                                            "made on)."}),
            "name": ("STRING", {"default": "my_memory", "tooltip": "The memory's name (a folder in "
                                "models/conceptkit/memories; letters, digits, - _ .)."}),
        }, "optional": {
            "trains": (list(TRAINS), {"default": DEFAULT_TRAINS, "tooltip": "What learning a concept fine-tunes, "
                       "chosen when the memory is made: full (every UNet weight: keeps concepts apart in one "
                       "picture best; each concept adds the UNet's size to the memory, 6 MB on the embedded model, "
                       "3.4 GB on SD1.5), attention (the attention weights), or lora (small files, blends concepts "
                       "more). An existing memory keeps what it was made with."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, name):
        return comfy.valid_file_name(name, "memory name")

    @classmethod
    def IS_CHANGED(cls, name, **_):
        """ComfyUI opens the memory again (and re-runs what uses it) when it changed on disk: a concept learned by
        another workflow, the folder removed or put back."""
        try:
            return MemoryStore.named(comfy.writable_folder(MEMORIES), name).on_disk()
        except InputError:  # a bad name: VALIDATE_INPUTS says so on the node
            return name

    def open(self, model, name, trains=DEFAULT_TRAINS):
        return (MemoryStore.open_or_create(comfy.writable_folder(MEMORIES), name, model, trains),)


class ConceptKitMemoryLearn:
    DESCRIPTION = ("Learns one concept (a few images, a new trigger word and its class word) into a memory, keeping "
                   "what it already holds: generated samples of earlier concepts are replayed and the memory before "
                   "this concept supervises the new one on earlier concepts' prompts. Checkpoints as it goes: queue "
                   "again after Cancel and it resumes; queued again after it finished, it returns the memory as is.")
    CATEGORY = f"{CATEGORY}/memory"
    RETURN_TYPES = (CK_MEMORY,)
    RETURN_NAMES = ("memory",)
    OUTPUT_TOOLTIPS = ("The memory with the new concept (a new version).",)
    FUNCTION = "learn"

    @classmethod
    def INPUT_TYPES(cls):
        defaults = LearnSettings()
        return {
            "required": {
                "memory": (CK_MEMORY, {"tooltip": "From Concept Memory (or another Memory Learn: learn in sequence)."}),
                "model": (CK_MODEL, {"tooltip": "The model the memory was made on (left unchanged)."}),
                "images": ("IMAGE", {"tooltip": "3-6 images of the new concept (any size: centre-cropped to a square "
                                                "at the model's resolution). They are not kept in the memory."}),
                "trigger": ("STRING", {"default": "<my-subject>", "tooltip": "A NEW word for this concept, not "
                                       "already in the memory, e.g. '<my-dog>'."}),
                "class_word": ("STRING", {"default": "creature", "tooltip": "What kind of thing it is ('dog', "
                                          "'creature'). Prompts name the concept as '<trigger> <class word>', e.g. "
                                          "'a <my-dog> dog on the beach'."}),
                "steps": ("INT", {"default": defaults.steps, "min": 1, "max": 100000, "tooltip": "Training steps."}),
                "seed": TRAINING_SEED,
            },
            "optional": {
                "captions": ("STRING", {"multiline": True, "default": "", "tooltip": "Optional: one caption per "
                             "image, with {trigger} where the concept is named ('a {trigger} on the beach' is filled "
                             "as 'a <my-dog> dog on the beach')."}),
                "learning_rate": ("FLOAT", {"default": defaults.learning_rate, "min": 0.0, "max": 1.0,
                                            "step": 1e-5, "round": 1e-7, "tooltip": "AdamW learning rate of the "
                                            "weights the memory trains; 0: the default for them ("
                                            + ", ".join(f"{k} {v:g}" for k, v in LEARNING_RATES.items()) + ")."}),
                "rank": ("INT", {"default": defaults.rank, "min": 1, "max": 128, "tooltip": "Rank of each concept's "
                                 "LoRA, for a memory that trains lora (its consolidated LoRA grows by this per "
                                 "concept)."}),
                "replay_weight": ("FLOAT", {"default": defaults.replay_weight, "min": 0.0, "max": 100.0, "step": 0.1,
                                            "tooltip": "mu: weight of replaying earlier concepts' generated samples "
                                                       "(0: off)."}),
                "distill_weight": ("FLOAT", {"default": defaults.distill_weight, "min": 0.0, "max": 100.0,
                                             "step": 0.1, "tooltip": "Weight of matching the memory before this "
                                             "concept on earlier concepts' prompts, and on the earlier concept's "
                                             "half of each pair composite (0: off)."}),
                "offset_penalty": ("FLOAT", {"default": defaults.offset_penalty, "min": 0.0, "max": 100.0,
                                             "step": 0.00001, "round": 1e-6, "tooltip": "lambda of the bound on "
                                             "how far this concept may move the model's weights (lambda x "
                                             "||delta W||^2, as Lipschitz Finetune): higher keeps earlier concepts "
                                             "and the base model's prompts, lower learns the new concept more freely "
                                             "(0: off). The default is chosen for a memory that trains full; for "
                                             "lora, 1e-4."}),
                "checkpoint_every": ("INT", {"default": defaults.checkpoint_every, "min": 0, "max": 100000,
                                             "tooltip": "Write a resumable checkpoint every N steps (0: only on "
                                                        "Cancel). Removed when the concept is learned."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "For SD models: a CLIP vision model (Load CLIP Vision) "
                                "whose image embeddings score the memory bank. The embedded model needs none."}),
                "if_learned": (list(IF_LEARNED), {"default": IF_LEARNED[0], "tooltip": "When the memory already "
                               "holds this trigger from another learning (other images or settings): new_version "
                               "learns it again as a new version of the memory (the earlier versions stay on "
                               "disk); error refuses. The same learning queued again returns the memory as is."}),
                "pair_composites": ("BOOLEAN", {"default": defaults.pair_composites, "tooltip": "Learn this "
                                    "concept beside the earlier ones, so that a prompt naming two of them draws "
                                    "both: for each image whose caption says a side ('on the left', 'at the "
                                    "top'), the memory draws an earlier concept on the other side and this "
                                    "concept learns from its own half (the other half held as the memory drew "
                                    "it). Needs captions that say sides; off: learn it alone."}),
            },
        }

    def learn(self, memory, model, images, trigger, class_word, steps, seed, captions="",
              learning_rate=LearnSettings.learning_rate, rank=LearnSettings.rank,
              replay_weight=LearnSettings.replay_weight, distill_weight=LearnSettings.distill_weight,
              offset_penalty=LearnSettings.offset_penalty, checkpoint_every=LearnSettings.checkpoint_every,
              clip_vision=None, if_learned=IF_LEARNED[0], pair_composites=LearnSettings.pair_composites):
        settings = LearnSettings(steps=steps, rank=rank, learning_rate=learning_rate, replay_weight=replay_weight,
                                 distill_weight=distill_weight, offset_penalty=offset_penalty, seed=seed,
                                 checkpoint_every=checkpoint_every, pair_composites=pair_composites)
        lines = caption_lines(captions) or None
        folder = comfy.run_folder(images, _Identity(memory, trigger.strip(), class_word.strip(), lines, settings),
                                  model)
        backbone = None if clip_vision is None else comfy_backbone(clip_vision)
        learn(memory, model, images, trigger, class_word, settings, captions=lines, clip_vision=backbone,
              checkpoint_dir=folder.path,
              progress=comfy.Progress(steps, "Memory Learn"), cancel=comfy.cancel_requested,
              preview=TrainingPreview(f"a {trigger.strip()} {class_word.strip()}", seed), identity=folder.identity,
              if_learned=if_learned)
        return (memory,)


class _Identity:
    """What makes one learning the same as another (its checkpoint folder and its record in the memory)."""

    def __init__(self, memory: MemoryStore, trigger: str, class_word: str, captions, settings: LearnSettings):
        # what the memory trains too: a memory made again under its name with other weights is another learning
        self.values = (memory.name, memory.trains(), trigger, class_word, captions, settings.signature())

    def signature(self) -> str:
        return repr(self.values)


class ConceptKitApplyMemory:
    DESCRIPTION = ("Applies every concept of a memory to a model (its consolidated weights and all its triggers), with "
                   "the concept attention artist: in the early sampling steps it moves the latents so that every "
                   "concept named in the prompt appears and two concepts do not blend. For ConceptKit Sample and "
                   "the Personalization Guidance Sampler.")
    CATEGORY = f"{CATEGORY}/memory"
    RETURN_TYPES = (CK_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the memory's concepts; write their triggers in prompts.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (CK_MODEL, {"tooltip": "The model the memory was made on (not copied or changed)."}),
            "memory": (CK_MEMORY, {"tooltip": "From Concept Memory or Memory Learn."}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 4.0, "step": 0.05, "tooltip": "How strongly "
                                   "the memory's weights apply (1 = as learned)."}),
            "artist": ("BOOLEAN", {"default": True, "tooltip": "The concept attention artist on prompts that name "
                                   "the memory's concepts (one extra UNet pass with gradients per early step)."}),
            "artist_step_size": ("FLOAT", {"default": DEFAULT_STEP_SIZE, "min": 0.0, "max": 1000.0, "step": 1.0,
                                           "tooltip": "How far the artist moves the latents per step."}),
            "artist_share": ("FLOAT", {"default": DEFAULT_ACTIVE_SHARE, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "The share of the steps, from the first, the artist acts in."}),
        }}

    def apply(self, model, memory, strength, artist, artist_step_size, artist_share):
        return (memory_model(model, memory, strength=strength, artist=artist, active_share=artist_share,
                             step_size=artist_step_size),)


class ConceptKitExportMemory:
    DESCRIPTION = ("Exports a memory for other tools: its consolidated weights — one kohya LoRA (models/loras: Load "
                   "LoRA, A1111) for a memory that trains lora; the tuned UNet with the triggers' embeddings in "
                   "diffusers format (a folder in models/diffusers) for one that trains full or attention — and "
                   "every trigger as a textual-inversion embedding (models/embeddings: 'embedding:NAME_trigger' in a "
                   "prompt).")
    CATEGORY = f"{CATEGORY}/memory"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "export"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (CK_MODEL, {"tooltip": "The model the memory was made on (it names the layers)."}),
            "memory": (CK_MEMORY, {"tooltip": "The memory to export."}),
            "name": ("STRING", {"default": "my_memory", "tooltip": "File name of the LoRA (or folder name of the "
                                "diffusers export); the embeddings get NAME_<trigger>."}),
            "if_exists": IF_EXISTS,
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, name):
        return comfy.valid_file_name(name, "export name")

    def export(self, model, memory, name, if_exists):
        memory.check_fits(model)
        paths = export_memory(memory.current(), model, comfy.writable_folder, name, if_exists)
        for path in paths:
            comfy.written_file_result(path, "memory export")
        return {"ui": {"text": [str(p) for p in paths]}}
