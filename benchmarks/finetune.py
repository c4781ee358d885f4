"""Bench suite `finetune`: Lipschitz Finetune against DreamBooth-LoRA, DreamBooth with prior preservation and
textual inversion, on the world's held-out subjects (METHODS.md §4, WORLD.md's metrics).

lambda is not known from the paper. Suite `finetune_lambda` chooses it on two CALIBRATION subjects that are
not bench subjects, by a fixed rule: the largest lambda of LAMBDA_GRID whose subject fidelity stays within
CALIBRATION_TOLERANCE of lambda = 0 (plain DreamBooth-LoRA). Its choice is DEFAULT_LAMBDA, which the
`finetune` suite and the node use. Each method runs in a fresh process, so its wall time and peak memory
are its own (peak: GPU memory allocated, or on CPU the resident memory sampled during training above its
level before)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from ..core.methods.lipschitz_finetune import DEFAULT_LAMBDA
from .common import (
    DRIFT_IMAGES,
    EVAL_IMAGES,
    SETTINGS,
    STEPS,
    SUBJECTS,
    TRAIN_FIELDS,
    TRAINING_IMAGES,
    drift_scenes,
    generate,
    run_isolated,
    subject_words,
    train_method,
)

log = logging.getLogger("conceptkit.bench")

METHODS = ("lipschitz", "dreambooth_lora", "dreambooth_prior", "textual_inversion")
OLD_DEFAULT_METHODS = ("lipschitz", "dreambooth_lora", "textual_inversion")  # rerun with the recipes before #31
OLD_DEFAULTS = {"augment_scale": 0.9, "token_init": "class"}
EVAL_SEEDS = 2
CALIBRATION_SUBJECTS = (10, 11)
LAMBDA_GRID = (0.0, 1e-5, 3e-5, 1e-4)
CALIBRATION_TOLERANCE = 0.02


def run_method(method: str, model_source: str | None, quick: bool, seed: int, subjects: tuple[int, ...],
               overrides: dict | None = None) -> tuple[dict, np.ndarray]:
    """Train and score one method on `subjects` (in its own process); scored at EVAL_SEEDS evaluation seeds, the
    spreads over subjects and seeds. overrides["old_defaults"]: the recipe as it was before #31 (zoom-in crops
    at scale 0.9, the trigger starting at the class word's vector and followed by the class word)."""
    import torch

    from ..core.concepts import apply_concept
    from ..core.metrics.cost import measure_cost
    from ..core.model import load_model
    from ..core.training import TrainConfig
    from ..core.world.metrics import drift, mean_text_fidelity, subject_fidelity
    from ..core.world.subjects import evaluation_scenes, reference_renders, training_renders

    torch.manual_seed(seed)
    model = load_model(model_source)
    overrides = dict(overrides or {})
    old = overrides.pop("old_defaults", False)
    settings = {**SETTINGS[method], **overrides, **(OLD_DEFAULTS if old else {})}
    train = {k: settings.pop(k) for k in list(settings) if k in TRAIN_FIELDS}
    scores = {"subject_fidelity": [], "text_fidelity": [], "drift_text": [], "drift_fd": []}
    seconds, peak, shown = 0.0, 0.0, []
    base_drift = generate(model, drift_scenes(), seed)
    with tempfile.TemporaryDirectory() as cache:  # class images are made fresh: their cost is the method's
        for subject in subjects:
            images, captions = training_renders(subject, TRAINING_IMAGES)
            token = f"<s{subject}>"
            if old:
                captions = [c.replace("{trigger}", "{trigger} creature") for c in captions]
            config = TrainConfig(trigger=token, class_word="creature", captions=captions, steps=STEPS[quick],
                                 batch_size=4, seed=seed, **train)
            with measure_cost(model.device) as cost:
                cache_option = {"class_cache_dir": Path(cache)} if method != "lipschitz" else {}
                result = train_method(model, torch.from_numpy(images).float() / 255, config, method, **cache_option,
                                      **settings)
            seconds += cost.seconds
            peak = max(peak, cost.peak_mb)
            tuned = apply_concept(model, result.concept)
            words = f"{token} creature" if old else subject_words(method, config)
            scenes = evaluation_scenes(subject, words, EVAL_IMAGES)
            for evaluation_seed in range(seed, seed + EVAL_SEEDS):
                generated = generate(tuned, scenes, evaluation_seed)
                scores["subject_fidelity"].append(subject_fidelity(generated, reference_renders(subject)))
                scores["text_fidelity"].append(mean_text_fidelity(generated, scenes))
                if evaluation_seed == seed:
                    shown.append(generated[:4])
            moved = drift(base_drift, generate(tuned, drift_scenes(), seed), drift_scenes())
            scores["drift_text"].append(moved["drift_text"])
            scores["drift_fd"].append(moved["drift_fd"])
            log.info("finetune: %s subject %d: %s", method, subject, {k: round(v[-1], 4) for k, v in scores.items()})
    row = {"method": method + (" (old defaults)" if old else ""), **{k: float(np.mean(v)) for k, v in scores.items()},
           **{f"{k}_sd": float(np.std(scores[k])) for k in ("subject_fidelity", "text_fidelity")},
           "seconds": seconds / len(subjects), "peak_mb": peak, "subjects": len(subjects)}
    return row, np.concatenate(shown)


def _isolated(method: str, options, subjects: tuple[int, ...], overrides: dict | None = None):
    return run_isolated(run_method, method, options.model, options.quick, options.seed, subjects, overrides)


def lambda_suite(options):
    """Suite `finetune_lambda`: Lipschitz Finetune on the calibration subjects for each lambda of the grid."""
    rows = []
    for value in LAMBDA_GRID:
        row, _ = _isolated("lipschitz", options, CALIBRATION_SUBJECTS, {"lipschitz_lambda": value})
        rows.append({"lambda": value, **{k: row[k] for k in ("subject_fidelity", "text_fidelity", "drift_text",
                                                             "drift_fd")}})
        log.info("finetune_lambda: %s", rows[-1])
    floor = rows[0]["subject_fidelity"] - CALIBRATION_TOLERANCE
    chosen = max(r["lambda"] for r in rows if r["subject_fidelity"] >= floor)
    notes = (f"Calibration subjects {CALIBRATION_SUBJECTS} (not bench subjects), {STEPS[options.quick]} steps, "
             f"settings {SETTINGS['lipschitz']} but lambda. Rule: the largest lambda whose subject fidelity is at "
             f"least lambda-0's minus {CALIBRATION_TOLERANCE}. Chosen: {chosen} (the shipped default is "
             f"{DEFAULT_LAMBDA}).")
    return rows, {}, notes, {}


def finetune_suite(options):
    subjects = tuple(range(SUBJECTS[options.quick]))
    rows, grids = [], {}
    runs = [(m, {}) for m in METHODS] + [(m, {"old_defaults": True}) for m in OLD_DEFAULT_METHODS]
    for method, overrides in runs:
        log.info("finetune: training %s %s on %d subjects", method, overrides, len(subjects))
        row, images = _isolated(method, options, subjects, overrides)
        rows.append(row)
        captions = [f"{row['method']}: subject {i // 4}, evaluation prompt {i % 4}" for i in range(len(images))]
        grids[method + ("_old_defaults" if overrides else "")] = (images, captions)
    notes = (f"{len(subjects)} held-out creatures, {TRAINING_IMAGES} training renders each, "
             f"{STEPS[options.quick]} steps at batch 4 for every method; settings per method: {SETTINGS}. "
             f"Subject fidelity: identity-network cosine to fresh renders; text fidelity: background and position "
             f"of {EVAL_IMAGES} new prompts per subject, each at {EVAL_SEEDS} evaluation seeds (the _sd columns: "
             f"the spread over subjects and seeds); '(old defaults)': {OLD_DEFAULTS} and the identifier "
             "'<s> creature' with the trigger starting at 'creature' (the recipes before #31); "
             f"drift: on {DRIFT_IMAGES} prompts without the token "
             "(shape scenes and plain 'creature' prompts) against the base model. seconds and peak_mb: training "
             "only (class images included for prior preservation), per subject, each method in a fresh process.")
    return rows, grids, notes, {}
