"""SGE Inverter (CRDI): a few images of a new domain -> an SGE set -> many new images of that domain."""

from __future__ import annotations

from ..core.errors import InputError
from ..core.methods.sge_inverter import (
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_MAPPING,
    DEFAULT_PENALTY,
    DEFAULT_RELAX,
    DEFAULT_SCALE,
    DEFAULT_SETTLE,
    DEFAULT_STEPS,
    MAPPINGS,
    MAX_IMAGES,
    Q_NOISES,
    InvertSettings,
    invert,
    load_sge,
    sample_sge,
    save_sge,
    sge_path,
)
from . import comfy_adapter as comfy
from .sockets import CATEGORY, CK_MODEL, CK_SGE, IF_EXISTS, MAX_SEED, TRAINING_SEED

SGE_FOLDER = "conceptkit_sge"
NO_SGE = "(no SGE sets saved yet)"


class ConceptKitSGEInverter:
    DESCRIPTION = ("SGE Inverter (CRDI; Cao & Gong, ECCV 2024): learns one sample-wise guidance embedding per image "
                   "and per step of a guidance window from 1-10 images of a new domain, without fine-tuning the "
                   "model (forward passes only; the model is never changed). SGE Sample then draws many new images "
                   "of the domain. Checkpoints as it goes: queue the same inputs again after Cancel and it resumes.")
    CATEGORY = f"{CATEGORY}/domain"
    RETURN_TYPES = (CK_SGE,)
    RETURN_NAMES = ("sge",)
    OUTPUT_TOOLTIPS = ("The SGE set: connect it to SGE Sample or Save SGE.",)
    FUNCTION = "invert"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (CK_MODEL, {"tooltip": "The model to generate with (left unchanged)."}),
                "images": ("IMAGE", {"tooltip": f"1-{MAX_IMAGES} images of the new domain, all of one size "
                                                "(centre-cropped to a square at the model's resolution)."}),
                "steps": ("INT", {"default": DEFAULT_STEPS, "min": 2, "max": 1000, "tooltip": "DDIM steps of the "
                          "schedule the embeddings are learned for (SGE Sample uses the same). Official: 25."}),
                "window": (list(MAPPINGS), {"default": DEFAULT_MAPPING, "tooltip": "How the official guidance "
                           "window (DDIM steps 5-20 of 25 of a pixel model) is carried to this model's schedule: by "
                           "step index (the same share of the steps) or by noise level (the same sqrt(alpha-bar))."}),
                "window_start": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": "Explicit window: first "
                                 "step counted from the clean end. With window_end 0 the mapped window is used."}),
                "window_end": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": "Explicit window: end "
                               "(excluded), counted from the clean end; generation starts there. 0: the mapped "
                               "window."}),
                "scale": ("FLOAT", {"default": DEFAULT_SCALE, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip":
                                    "s: how strongly the embeddings steer the noise prediction (official 2.0)."}),
                "epochs": ("INT", {"default": DEFAULT_EPOCHS, "min": 1, "max": 10000, "tooltip": "Optimizer steps "
                           "per segment of the window (one per step of the window)."}),
                "seed": ("INT", {**TRAINING_SEED[1], "tooltip": "Seed of the inversion: the embeddings' start and "
                                 "every noise it draws. The same seed and inputs give the same set; queueing them "
                                 "again after a Cancel or crash resumes it."}),
            },
            "optional": {
                "learning_rate": ("FLOAT", {"default": DEFAULT_LR, "min": 1e-6, "max": 10.0, "step": 1e-4,
                                            "round": 1e-6, "tooltip": "Adam learning rate (official 0.05)."}),
                "penalty": ("FLOAT", {"default": DEFAULT_PENALTY, "min": 0.0, "max": 100.0, "step": 0.01,
                                      "tooltip": "Weight of the pull of every image's embedding to the set's mean "
                                                 "(the shared, domain part; official 1)."}),
                "checkpoint_every": ("INT", {"default": 300, "min": 0, "max": 100000, "tooltip": "Write a "
                                     "resumable checkpoint every N optimizer steps (0: only on Cancel). Removed "
                                     "when the inversion finishes."}),
                # added later: after the older widgets, so saved workflows keep their values in place
                "prompt": ("STRING", {"default": "", "multiline": False, "tooltip": "c: the prompt the model's "
                           "prediction is taken with, during inversion and when SGE Sample draws (empty: "
                           "unconditional, as the official pixel model; a class prompt such as 'a creature' suits a "
                           "text-to-image model)."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1, "tooltip": "Classifier-free "
                        "guidance scale of that prediction (1: the conditional pass only). Used by SGE Sample too."}),
                "q_noise": (list(Q_NOISES), {"default": "random", "tooltip": "Noise of the noised targets: random "
                            "(fresh at every step, the official run's) or fixed (one seed-0 noise for every epoch: "
                            "the base model's predictions are computed once, much faster)."}),
                "settle": ("FLOAT", {"default": DEFAULT_SETTLE, "min": 0.0, "max": 0.5, "step": 0.001,
                                     "round": 1e-4, "tooltip": "End a segment before its epochs once its loss has "
                                     "settled: the last 10 epochs' mean loss is less than this fraction below the 10 "
                                     "before (0: every epoch, as the official code)."}),
            },
        }

    def invert(self, model, images, steps, window, window_start, window_end, scale, epochs, seed, prompt="", cfg=1.0,
               q_noise="random", learning_rate=DEFAULT_LR, penalty=DEFAULT_PENALTY, checkpoint_every=300,
               settle=DEFAULT_SETTLE):
        explicit = (window_start, window_end) if window_end else None
        settings = InvertSettings(steps=steps, mapping=window, window=explicit, scale=scale, epochs=epochs,
                                  learning_rate=learning_rate, penalty=penalty, prompt=prompt.strip(), cfg=cfg,
                                  q_noise=q_noise, settle=settle, seed=seed, checkpoint_every=checkpoint_every)
        folder = comfy.run_folder(images, settings, model)
        return (invert(model, images, settings, checkpoint_dir=folder.path,
                       progress=comfy.Progress(epochs, "SGE Inverter"), cancel=comfy.cancel_requested),)


class ConceptKitSGESample:
    DESCRIPTION = ("Draws new images of an SGE set's domain by conditional relaxing (CRDI): each starts from one of "
                   "the domain's images noised to the window's top; inside the window every step takes a random "
                   "image's embedding plus annealed noise. One seed, one image, whatever the count.")
    CATEGORY = f"{CATEGORY}/domain"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The new images.",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (CK_MODEL, {"tooltip": "The model the SGE set was inverted on."}),
            "sge": (CK_SGE, {"tooltip": "From SGE Inverter or Load SGE."}),
            "count": ("INT", {"default": 4, "min": 1, "max": 256, "tooltip": "How many images."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                             "tooltip": "Seed of the first new image; image i uses seed + i: which target it starts "
                                        "from, its start noise, and its draws of stored embeddings and relaxing "
                                        "noise. One seed, one image, whatever the count."}),
            "relax": ("FLOAT", {"default": DEFAULT_RELAX, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip": "a: "
                      "the annealed noise added to the drawn embeddings (more: more varied, less like the domain; "
                      "official 0.05)."}),
        }}

    def generate(self, model, sge, count, seed, relax):
        result = sample_sge(model, sge, count=count, seed=seed, relax=relax,
                            progress=comfy.Progress(sge.window.end, "SGE Sample"), cancel=comfy.cancel_requested)
        return (result.images,)


class ConceptKitSaveSGE:
    DESCRIPTION = ("Saves an SGE set as one .safetensors file (embeddings, the targets' latents and what they were "
                   "made for) in models/conceptkit/sge, where Load SGE finds it.")
    CATEGORY = f"{CATEGORY}/domain"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sge": (CK_SGE, {"tooltip": "The SGE set to save."}),
            "name": ("STRING", {"default": "my_domain", "tooltip": "File name (letters, digits, - _ .); no "
                                "folders."}),
            "if_exists": IF_EXISTS,
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, name):
        return comfy.valid_file_name(name, "SGE set name")

    def save(self, sge, name, if_exists):
        path = save_sge(sge, sge_path(comfy.writable_folder(SGE_FOLDER), name), if_exists)
        return comfy.written_file_result(path, "SGE set")


class ConceptKitLoadSGE:
    DESCRIPTION = "Loads an SGE set saved by Save SGE (safetensors only)."
    CATEGORY = f"{CATEGORY}/domain"
    RETURN_TYPES = (CK_SGE,)
    RETURN_NAMES = ("sge",)
    OUTPUT_TOOLTIPS = ("The SGE set, for SGE Sample (it only fits the model it was inverted on).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sge_name": (comfy.list_model_files(SGE_FOLDER, (".safetensors",)) or [NO_SGE], {
                "tooltip": "An SGE set file in models/conceptkit/sge."}),
        }}

    def load(self, sge_name):
        if sge_name == NO_SGE:
            raise InputError("there are no SGE set files in models/conceptkit/sge yet; save one with Save SGE "
                             "first.")
        return (load_sge(comfy.model_path(SGE_FOLDER, sge_name)),)
