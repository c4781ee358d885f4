"""Bench suite `encoder`: the Concept Encoder (E4T) against textual inversion and DreamBooth-LoRA from the same ONE
image, and DreamBooth-LoRA from 4 images as the reference (METHODS.md §1, WORLD.md's metrics).

Held-out subjects 0-3 (never in the encoder's domain: its creatures come from ENCODER_DOMAIN_SEEDS), each from
its first training render. Every method runs in a fresh process (its own seconds and peak memory); the same
evaluation prompts and seeds as suite `finetune`. Sampling cost: an E4T concept against CFG on the base model,
the same prompt, batch and steps, interleaved in one process."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import numpy as np

from .common import EVAL_CFG, EVAL_IMAGES, EVAL_STEPS, generate, run_isolated, subject_words, train_method

log = logging.getLogger("conceptkit.bench")

SUBJECTS = {False: (0, 1, 2, 3), True: (0,)}
# (row name, method, images, steps); steps of E4T are its tuning steps (None: the default), at its tuning batch
RUNS = (("e4t (encoder only, no tuning)", "e4t", 1, 0), ("e4t", "e4t", 1, None),
        ("e4t, e* = class word (encoder off)", "e4t_encoder_off", 1, None),
        ("tuning without the encoder (DreamBooth, E4T's steps)", "dreambooth_full", 1, None),
        ("textual_inversion", "textual_inversion", 1, 1000), ("dreambooth_lora", "dreambooth_lora", 1, 300),
        ("dreambooth_lora (4 images)", "dreambooth_lora", 4, 300))
QUICK_STEPS = {1000: 100, 300: 60}
SETTINGS = {"textual_inversion": dict(embedding_learning_rate=5e-3),
            "dreambooth_lora": dict(trainable="lora", rank=8, learning_rate=5e-3)}
BATCH = 4  # the baselines' batch
COST_ROUNDS = {False: 6, True: 1}
COST_BATCH = 4
DEPENDENCE_BATCHES, DEPENDENCE_BATCH = 8, 16
DEPENDENCE_SEED = 7  # held-out batches of the encoder's domain: a seed its pre-training (seed 0) does not draw


@contextmanager
def unet_samples(model):
    """Counts the samples the UNet's forward passes see in the block: `trained` (with autograd on: each also
    costs a backward pass) and `other` (forward only, e.g. E4T's read of the noisy latent)."""
    import torch

    counts = {"trained": 0, "other": 0}

    def count(module, args):
        counts["trained" if torch.is_grad_enabled() else "other"] += len(args[0])

    handle = model.unet.register_forward_pre_hook(count)
    try:
        yield counts
    finally:
        handle.remove()


def encoder_concept(model, image, token: str, steps: int, seed: int, encoder_off: bool = False, caption: str = ""):
    """An E4T concept of one render (uint8 [H, W, 3]) with the shipped creature encoder, tuned on the render's
    caption (`encoder_off`: its output scaled by 0, so e* is the class word's vector and only the weights learn)."""
    import dataclasses

    from ..core.methods.concept_encoder import (
        EMBEDDED_ENCODER,
        TuneSettings,
        load_encoder,
        one_rgb_image,
        tune_concept,
    )
    from ..core.model.image_features import world_backbone

    pretrained = load_encoder(EMBEDDED_ENCODER, model)
    if encoder_off:
        pretrained.encoder.spec = dataclasses.replace(pretrained.encoder.spec, scale=0.0)
    return tune_concept(model, pretrained, world_backbone(model), one_rgb_image(image, model.default_size), token,
                        TuneSettings(steps=steps, seed=seed, caption=caption))


def run_one(method: str, images_count: int, steps: int | None, model_source, quick: bool, seed: int,
            subjects: tuple[int, ...]) -> tuple[dict, np.ndarray]:
    import torch

    from ..core.concepts import apply_concept
    from ..core.methods.concept_encoder.training import TuneSettings
    from ..core.metrics.cost import measure_cost
    from ..core.model import load_model
    from ..core.training import TrainConfig
    from ..core.world.metrics import mean_text_fidelity, subject_fidelity
    from ..core.world.subjects import evaluation_scenes, reference_renders, training_renders

    torch.manual_seed(seed)
    model = load_model(model_source)
    tuning = TuneSettings()
    e4t = method.startswith("e4t")
    if steps is None:  # E4T's tuning, or the ablation that tunes as long without the encoder
        steps = tuning.steps
    elif not e4t and quick:
        steps = QUICK_STEPS[steps]
    fidelity, text, seconds, peak, shown, samples = [], [], 0.0, 0.0, [], {"trained": 0, "other": 0}
    for subject in subjects:
        renders, captions = training_renders(subject, images_count)
        token = f"<s{subject}>"
        with measure_cost(model.device) as cost, unet_samples(model) as counted:
            if e4t:
                concept = encoder_concept(model, renders[0], token, steps, seed, method == "e4t_encoder_off",
                                          captions[0])
            else:
                if method in SETTINGS:
                    settings, batch = SETTINGS[method], BATCH
                else:  # the ablation: E4T's tuning (steps, batch, learning rate) on the full UNet, no encoder
                    settings, batch = dict(trainable="full", learning_rate=tuning.learning_rate), tuning.batch_size
                config = TrainConfig(trigger=token, class_word="creature", captions=captions, steps=steps,
                                     batch_size=batch, seed=seed, **settings)
                concept = train_method(model, torch.from_numpy(renders).float() / 255, config, method).concept
        seconds += cost.seconds
        samples = {k: samples[k] + counted[k] for k in samples}
        peak = max(peak, cost.peak_mb)
        scenes = evaluation_scenes(subject, token if e4t else subject_words(method, config), EVAL_IMAGES)
        generated = generate(apply_concept(model, concept), scenes, seed)
        fidelity.append(subject_fidelity(generated, reference_renders(subject)))
        text.append(mean_text_fidelity(generated, scenes))
        shown.append(generated[:4])
        log.info("encoder: %s (%d images, %s steps) subject %d: fidelity %.3f text %.3f, %.2f s", method,
                 images_count, steps, subject, fidelity[-1], text[-1], cost.seconds)
    row = {"images": images_count, "tuning_steps": steps, "subject_fidelity": float(np.mean(fidelity)),
           "fidelity_min": float(np.min(fidelity)), "fidelity_max": float(np.max(fidelity)),
           "text_fidelity": float(np.mean(text)), "seconds_per_concept": seconds / len(subjects), "peak_mb": peak,
           **{f"unet_samples_{k}": v / len(subjects) for k, v in samples.items()}}
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
        grids[name] = (
            shown, [f"{name}: subject {subjects[i // 4]}, evaluation prompt {i % 4}" for i in range(len(shown))])
    cost = run_isolated(sampling_cost, options.model, options.quick, options.seed)
    reads = run_isolated(shipped_encoder_dependence, options.model, options.quick)
    e4t, ti = (next(r for r in rows if r["method"] == name) for name in ("e4t", "textual_inversion"))
    notes = (f"Held-out subjects {subjects}, ONE image each (its first training render; the 4-image reference uses "
             f"the first four), {EVAL_IMAGES} evaluation prompts per subject at {EVAL_STEPS} DDIM steps, CFG "
             f"{EVAL_CFG}. Baseline settings: {SETTINGS}, batch {BATCH}. seconds_per_concept and peak_mb: making the "
             "concept only, each method in a fresh process. fidelity_min/max: the spread over subjects. "
             f"Speed: E4T / textual inversion = {e4t['seconds_per_concept'] / ti['seconds_per_concept']:.4f}; "
             "unet_samples_trained/other: the samples the UNet's forward passes saw per concept, with autograd on "
             "(each also a backward pass) and forward only; on a CPU the time follows them: E4T / textual inversion "
             f"= {e4t['unet_samples_trained'] / ti['unet_samples_trained']:.4f} of the trained samples. "
             f"Sampling cost per image, E4T concept / CFG on the base (batch {COST_BATCH}, {cost['rounds']} "
             f"interleaved rounds): {cost['e4t_over_cfg']:.3f}x. Does the shipped encoder read its image "
             f"({reads['batches']} held-out batches of {DEPENDENCE_BATCH} of its domain): loss {reads['loss']:.4f}, "
             f"wrong-image gap {reads['wrong_image_gap']:.5f} (standard error {reads['gap_se']:.5f}); e* moves "
             f"{reads['spread_images']:.3f} across images at one latent and {reads['spread_latents']:.3f} across "
             f"latents for one image. Pre-training: {reads['encoder_steps']} steps (the encoder file).")
    return rows, grids, notes, {}


def shipped_encoder_dependence(model_source, quick: bool) -> dict:
    """`image_dependence` of the shipped creature encoder."""
    from ..core.methods.concept_encoder import EMBEDDED_ENCODER, load_encoder
    from ..core.model import load_model
    from ..core.model.image_features import world_backbone

    model = load_model(model_source)
    pretrained = load_encoder(EMBEDDED_ENCODER, model)
    batches = 2 if quick else DEPENDENCE_BATCHES
    return {**image_dependence(model, pretrained, world_backbone(model), batches=batches), "batches": batches,
            "encoder_steps": pretrained.steps}


def image_dependence(model, pretrained, backbone, batches: int = DEPENDENCE_BATCHES,
                     batch_size: int = DEPENDENCE_BATCH) -> dict:
    """Does the encoder read its image? On `batches` held-out batches of its domain: the pre-training loss with
    each sample's own condition image and with another sample's (the batch rolled by one; the same noises and
    timesteps), their paired difference (`wrong_image_gap`, positive when the right image helps) with its
    standard error; and how far e* moves across the batch's images at one noisy latent (`spread_images`) against
    across the batch's noisy latents for one image (`spread_latents`): RMS distance from the mean, in the text
    encoder's input space."""
    import torch
    from diffusers import DDPMScheduler

    from ..core.methods.concept_encoder import PretrainSettings, pretrain_encoder
    from ..core.methods.concept_encoder.domain import world_domain
    from ..core.methods.concept_encoder.encoder import empty_prompt_features, placeholder_vectors
    from ..core.methods.concept_encoder.training import PRETRAIN_TRIGGER, class_vectors
    from ..core.model import encode_prompts
    from ..core.training import Stream

    domain = world_domain(PRETRAIN_TRIGGER)

    def evaluation(rolled: bool):
        def make(step, size, generator):
            batch = domain(step, size, torch.Generator().manual_seed(DEPENDENCE_SEED * 1_000_003 + step))
            if rolled:
                batch.extra["condition"] = batch.extra["condition"].roll(1, 0)
            return batch
        frozen = PretrainSettings(steps=batches, batch_size=batch_size, learning_rate=0.0, seed=DEPENDENCE_SEED)
        _, outcome = pretrain_encoder(model, backbone, pretrained, frozen, Stream(make))
        return np.array(outcome.losses[-batches:])

    right, wrong = evaluation(False), evaluation(True)
    gap = wrong - right
    batch = domain(0, batch_size, torch.Generator().manual_seed(DEPENDENCE_SEED))
    with torch.no_grad():
        images = backbone.features(batch.extra["condition"].to(model.device))
        latents = model.vae.encode(batch.images.to(model.device, model.vae.dtype)).latent_dist.mean \
            * model.vae.config.scaling_factor
        generator = torch.Generator().manual_seed(DEPENDENCE_SEED)
        t = torch.randint(100, 900, (batch_size,), generator=generator)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        noisy = DDPMScheduler.from_config(model.scheduler_config).add_noise(latents, noise, t.to(latents.device))
        unet = empty_prompt_features(model, noisy, t.to(model.device), encode_prompts(model, [""] * batch_size))
        encoder = pretrained.encoder.eval()
        code = encoder.image_code(images)
        vectors = class_vectors(model, pretrained.class_word)
        grid = torch.stack([torch.cat(placeholder_vectors(
            encoder.from_code(code, unet[j:j + 1].expand(batch_size, -1)), vectors, encoder.spec.scale), dim=-1)
            for j in range(batch_size)])  # [latent j, image i, dim]
    across_images = (grid - grid.mean(1, keepdim=True)).pow(2).sum(-1).mean().sqrt()
    across_latents = (grid - grid.mean(0, keepdim=True)).pow(2).sum(-1).mean().sqrt()
    return {"loss": float(right.mean()), "wrong_image_gap": float(gap.mean()),
            "gap_se": float(gap.std(ddof=1) / np.sqrt(len(gap))), "spread_images": float(across_images),
            "spread_latents": float(across_latents)}

