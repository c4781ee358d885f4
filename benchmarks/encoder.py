"""Bench suite `encoder`: the Concept Encoder (E4T) against textual inversion and DreamBooth-LoRA from the same ONE
image, and DreamBooth-LoRA from 4 images as the reference (METHODS.md §1, WORLD.md's metrics).

Held-out subjects 0-3 (never in the encoder's domain: its creatures come from ENCODER_DOMAIN_SEEDS), each from
its first training render. Every method runs in a fresh process (its own seconds and peak memory); the same
evaluation prompts and seeds as suite `finetune`. Sampling cost: an E4T concept against CFG on the base model,
the same prompt, batch and steps, interleaved in one process."""

from __future__ import annotations

import logging
import time

import numpy as np

from .common import EVAL_CFG, EVAL_IMAGES, EVAL_STEPS, generate, run_isolated, subject_words, train_method

log = logging.getLogger("conceptkit.bench")

SUBJECTS = {False: (0, 1, 2, 3), True: (0,)}
# (row name, method, images, steps); steps of E4T are its tuning steps
RUNS = (("e4t (encoder only)", "e4t", 1, 0), ("e4t", "e4t", 1, None),
        ("textual_inversion", "textual_inversion", 1, 1000), ("dreambooth_lora", "dreambooth_lora", 1, 300),
        ("dreambooth_lora (4 images)", "dreambooth_lora", 4, 300))
QUICK_STEPS = {1000: 100, 300: 60}
SETTINGS = {"textual_inversion": dict(embedding_learning_rate=5e-3),
            "dreambooth_lora": dict(trainable="lora", rank=8, learning_rate=5e-3)}
COST_ROUNDS = {False: 6, True: 1}
COST_BATCH = 4


def encoder_concept(model, image, token: str, steps: int, seed: int):
    """An E4T concept of one render (uint8 [H, W, 3]) with the shipped creature encoder."""
    from ..core.methods.concept_encoder import (
        EMBEDDED_ENCODER,
        TuneSettings,
        load_encoder,
        one_rgb_image,
        tune_concept,
    )
    from ..core.model.image_features import world_backbone

    return tune_concept(model, load_encoder(EMBEDDED_ENCODER, model), world_backbone(model),
                        one_rgb_image(image, model.default_size), token, TuneSettings(steps=steps, seed=seed))


def run_one(method: str, images_count: int, steps: int | None, model_source, quick: bool, seed: int,
            subjects: tuple[int, ...]) -> tuple[dict, np.ndarray]:
    import torch

    from ..core.concepts import apply_concept
    from ..core.methods.concept_encoder.training import DEFAULT_TUNING_STEPS
    from ..core.metrics.cost import measure_cost
    from ..core.model import load_model
    from ..core.training import TrainConfig
    from ..core.world.metrics import mean_text_fidelity, subject_fidelity
    from ..core.world.subjects import evaluation_scenes, reference_renders, training_renders

    torch.manual_seed(seed)
    model = load_model(model_source)
    if method == "e4t" and steps is None:
        steps = DEFAULT_TUNING_STEPS
    if method != "e4t" and quick:
        steps = QUICK_STEPS[steps]
    fidelity, text, seconds, peak, shown = [], [], 0.0, 0.0, []
    for subject in subjects:
        renders, captions = training_renders(subject, images_count)
        token = f"<s{subject}>"
        with measure_cost(model.device) as cost:
            if method == "e4t":
                concept = encoder_concept(model, renders[0], token, steps, seed)
            else:
                config = TrainConfig(trigger=token, class_word="creature", captions=captions, steps=steps,
                                     batch_size=4, seed=seed, **SETTINGS[method])
                concept = train_method(model, torch.from_numpy(renders).float() / 255, config, method).concept
        seconds += cost.seconds
        peak = max(peak, cost.peak_mb)
        scenes = evaluation_scenes(subject, token if method == "e4t" else subject_words(method, config), EVAL_IMAGES)
        generated = generate(apply_concept(model, concept), scenes, seed)
        fidelity.append(subject_fidelity(generated, reference_renders(subject)))
        text.append(mean_text_fidelity(generated, scenes))
        shown.append(generated[:4])
        log.info("encoder: %s (%d images, %s steps) subject %d: fidelity %.3f text %.3f, %.2f s", method,
                 images_count, steps, subject, fidelity[-1], text[-1], cost.seconds)
    row = {"images": images_count, "tuning_steps": steps, "subject_fidelity": float(np.mean(fidelity)),
           "fidelity_min": float(np.min(fidelity)), "fidelity_max": float(np.max(fidelity)),
           "text_fidelity": float(np.mean(text)), "seconds_per_concept": seconds / len(subjects), "peak_mb": peak}
    return row, np.concatenate(shown)


def sampling_cost(model_source, quick: bool, seed: int) -> dict:
    """Seconds per image of sampling with an E4T concept / with CFG on the base model (interleaved rounds)."""
    import torch

    from ..core.concepts import apply_concept
    from ..core.model import load_model
    from ..core.sampling import CFG, sample
    from ..core.world.subjects import training_renders

    model = load_model(model_source)
    concept = encoder_concept(model, training_renders(0, 1)[0][0], "<s0>", 0, seed)
    runs = {"e4t": (apply_concept(model, concept), "a <s0> on the left, red background"),
            "cfg": (model, "a creature on the left, red background")}
    times = dict.fromkeys(runs, 0.0)
    for round_ in range(COST_ROUNDS[quick] + 1):
        order = list(runs) if round_ % 2 == 0 else list(runs)[::-1]
        for name in order:
            tuned, prompt = runs[name]
            start = time.perf_counter()
            with torch.no_grad():
                sample(tuned, prompt, batch_size=COST_BATCH, seed=seed, steps=EVAL_STEPS, guidance=CFG(EVAL_CFG))
            if round_:  # round 0 warms up
                times[name] += time.perf_counter() - start
    return {"e4t_over_cfg": times["e4t"] / times["cfg"], "rounds": COST_ROUNDS[quick]}


def encoder_suite(options):
    subjects = SUBJECTS[options.quick]
    rows, grids = [], {}
    for name, method, images_count, steps in RUNS:
        log.info("encoder: %s on %d subjects", name, len(subjects))
        row, shown = run_isolated(run_one, method, images_count, steps, options.model, options.quick, options.seed,
                                  subjects)
        rows.append({"method": name, **row})
        grids[name.replace(" ", "_").replace("(", "").replace(")", "")] = (
            shown, [f"{name}: subject {subjects[i // 4]}, evaluation prompt {i % 4}" for i in range(len(shown))])
    cost = run_isolated(sampling_cost, options.model, options.quick, options.seed)
    e4t, ti = rows[1], rows[2]
    notes = (f"Held-out subjects {subjects}, ONE image each (its first training render; the 4-image reference uses "
             f"the first four), {EVAL_IMAGES} evaluation prompts per subject at {EVAL_STEPS} DDIM steps, CFG "
             f"{EVAL_CFG}. Baseline settings: {SETTINGS}, batch 4. seconds_per_concept and peak_mb: making the "
             "concept only, each method in a fresh process. fidelity_min/max: the spread over subjects. "
             f"Speed: E4T / textual inversion = {e4t['seconds_per_concept'] / ti['seconds_per_concept']:.4f}. "
             f"Sampling cost per image, E4T concept / CFG on the base (batch {COST_BATCH}, {cost['rounds']} "
             f"interleaved rounds): {cost['e4t_over_cfg']:.3f}x. Pre-training: see the encoder file's steps "
             "(README).")
    return rows, grids, notes, {}
