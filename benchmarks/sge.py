"""Bench suite `sge`: the SGE Inverter (CRDI, METHODS.md §2) on every fair unseen domain of the world (the world
check's: its creatures and shapes at a place no caption names, top left or bottom right), 10 shots, against a LoRA
fine-tuned on the targets, img2img variations of the targets at the SGE window's noise, and the base model with the
closest text prompt.

Rows: domain_hit (share of samples that read as the domain), domain_fd (Fréchet distance of scene features
to other renders of the domain; CRDI's FID protocol), diversity (CRDI's intra-cluster distance in scene features),
copy_rate (share of samples closer in pixels to a target than two renders of one target scene are to each other:
memorization), seconds_invert (inversion or training; 0 for the training-free baselines), seconds_per_image;
for SGE also own_row_hit (each target's own row, no relaxing, from that target: reconstruction) and
mean_row_hit (every step the rows' mean: the domain's shared part alone).
Every method runs in a fresh process (its own seconds)."""

from __future__ import annotations

import logging
import time

import numpy as np

from ..core.world.vocabulary import FAIR_DOMAINS
from .common import EVAL_CFG, EVAL_STEPS, run_isolated

log = logging.getLogger("conceptkit.bench")

SHOTS = (10,)
OWN_ROW_SAMPLES = 3  # per target
SAMPLES = {False: 32, True: 8}
REFERENCE_RENDERS = 64
SAMPLE_SEED = 1000
TRIGGER, CLASS_WORD = "<zz>", "background"
LORA = dict(trainable="lora", rank=8, learning_rate=5e-3, batch_size=4)
LORA_STEPS = {False: 300, True: 60}
SGE_EPOCHS = {False: None, True: 10}  # None: the default
CLOSEST_WORDS = {"top_left": "on the left", "bottom_right": "on the right"}  # the captioned place nearest each
METHODS = ("sge (window by step)", "sge (window by noise)", "lora", "img2img", "text")


def targets(shots: int, domain: str):
    from ..core.world.scenes import style_renders, style_scenes

    return style_renders(shots, domain=domain), style_scenes(shots, domain=domain)


def prompt_scenes(count: int, seed: int, domain: str):
    """Scenes of the domain the prompt-driven baselines draw (other than the targets)."""
    from ..core.world.scenes import style_scenes

    return style_scenes(count, seed, "reference", domain)


def with_pattern_word(scene, word: str) -> str:
    """The scene's caption with what makes it the unseen domain named `word` (a trigger, or a known word): its
    pattern ("a creature on the left, red <zz> background"), or its held-out place ("a creature <zz>, red
    background")."""
    from ..core.world.vocabulary import HELDOUT_PLACES, PATTERN_WORDS

    places = {o.position for o in scene.objects} & set(HELDOUT_PLACES)
    if places:
        return scene.caption().replace(f" {places.pop()},", f" {word},")
    said = PATTERN_WORDS.get(scene.pattern, scene.pattern)
    return scene.caption().replace(f"{said} background", f"{word} background")


def run_method(method: str, shots: int, model_source, quick: bool, seed: int, domain: str) -> dict:
    """One method's samples and timings, in its own process."""
    import torch

    from ..core.methods.sge_inverter import InvertSettings, invert, sample_sge
    from ..core.model import load_model
    from ..core.sampling import CFG, sample
    from ..core.world.metrics import as_uint8

    torch.manual_seed(seed)
    model = load_model(model_source)
    images, scenes = targets(shots, domain)
    pixels = torch.from_numpy(images).float() / 255
    count = SAMPLES[quick]
    seconds_invert, info = 0.0, {}
    start = time.perf_counter()
    if method.startswith("sge"):
        mapping = "step" if "step" in method else "noise"
        settings = InvertSettings(mapping=mapping, seed=seed)
        if SGE_EPOCHS[quick]:
            settings.epochs = SGE_EPOCHS[quick]
        sge = invert(model, pixels, settings)
        seconds_invert = time.perf_counter() - start
        info = {"window": [sge.window.start, sge.window.end], "epochs": settings.epochs,
                "final_loss": sge.parameters["losses"][-1]}
        start = time.perf_counter()
        out = sample_sge(model, sge, count=count, seed=SAMPLE_SEED).images
    elif method == "lora":
        from ..core.concepts import apply_concept
        from ..core.recipes import train_recipe
        from ..core.training import TrainConfig, fill_template

        def slotted(domain_scenes) -> list[str]:  # "{trigger}" names the domain: "red <zz> background" (its class)
            return [with_pattern_word(s, "{trigger}").replace("{trigger} background", "{trigger}")
                    for s in domain_scenes]

        config = TrainConfig(trigger=TRIGGER, class_word=CLASS_WORD, steps=LORA_STEPS[quick], seed=seed,
                             captions=slotted(scenes), **LORA)
        concept = train_recipe(model, pixels, config, "dreambooth_lora").concept
        seconds_invert = time.perf_counter() - start
        tuned = apply_concept(model, concept)
        prompts = [fill_template(c, config) for c in slotted(prompt_scenes(count, seed, domain))]
        start = time.perf_counter()
        out = sample(tuned, prompts, seed=SAMPLE_SEED, steps=EVAL_STEPS, guidance=CFG(EVAL_CFG)).images
    elif method == "img2img":
        from ..core.methods.sge_inverter import map_window
        from ..core.sampling.schedulers import make_scheduler
        from ..core.training import prepare_images

        scheduler = make_scheduler(model.scheduler_config, "ddim")
        scheduler.set_timesteps(EVAL_STEPS)
        window = map_window(scheduler.timesteps, scheduler.alphas_cumprod, "step")
        picks = [int(i) for i in np.random.default_rng(seed).integers(0, shots, count)]
        with torch.no_grad():
            encoded = model.vae.encode(prepare_images(pixels[picks], model.default_size).to(model.device, model.dtype))
            latents = encoded.latent_dist.mean * model.vae.config.scaling_factor
        info = {"start_step": window.first_loop_index}
        out = sample(model, "", batch_size=count, seed=SAMPLE_SEED, steps=EVAL_STEPS, init_latents=latents,
                     start_step=window.first_loop_index, guidance=CFG(1.0)).images
    elif method == "text":
        prompts = [with_pattern_word(s, CLOSEST_WORDS[domain]) for s in prompt_scenes(count, seed, domain)]
        out = sample(model, prompts, seed=SAMPLE_SEED, steps=EVAL_STEPS, guidance=CFG(EVAL_CFG)).images
    else:
        raise ValueError(method)
    seconds_per_image = (time.perf_counter() - start) / count
    if method.startswith("sge"):  # after the timing: the ablations are not the method's cost
        info["own_row"], info["mean_row"] = _row_ablations(model, sge, domain)
    return {"samples": as_uint8(out), "seconds_invert": seconds_invert, "seconds_per_image": seconds_per_image,
            "info": info}


def _row_ablations(model, sge, domain: str) -> tuple[float, float]:
    """Domain hit rates of generation from each target's own row (no relaxing, started from that target) and from
    the rows' mean at every step."""
    from dataclasses import replace

    from ..core.methods.sge_inverter import sample_sge
    from ..core.world.metrics import as_uint8, domain_hit_rate

    own = [as_uint8(sample_sge(model, replace(sge, sge=sge.sge[i:i + 1], targets=sge.targets[i:i + 1]),
                               count=OWN_ROW_SAMPLES, seed=SAMPLE_SEED, relax=0.0).images) for i in range(sge.count)]
    mean = replace(sge, sge=sge.sge.mean(0, keepdim=True).expand_as(sge.sge).clone())
    shared = as_uint8(sample_sge(model, mean, count=SAMPLES[False] // 2, seed=SAMPLE_SEED).images)
    return domain_hit_rate(np.concatenate(own), domain), domain_hit_rate(shared, domain)


def copy_threshold(shots: int, domain: str) -> float:
    """Median pixel distance (mean |difference|, 0..1) between two renders of one target scene."""
    from ..core.world.scenes import style_renders

    first = style_renders(shots, domain=domain).astype(np.float32) / 255
    rng = np.random.default_rng([0, 99])
    second = np.stack([s.render(rng) for s in targets(shots, domain)[1]]).astype(np.float32) / 255
    return float(np.median(np.abs(first - second).mean((1, 2, 3))))


def copy_rate(samples: np.ndarray, target_images: np.ndarray, threshold: float) -> float:
    s = samples.astype(np.float32)[:, None] / 255
    t = target_images.astype(np.float32)[None] / 255
    nearest = np.abs(s - t).mean((2, 3, 4)).min(1)
    return float((nearest < threshold).mean())


def sge_suite(options):
    from ..core.world.metrics import domain_fidelity, domain_hit_rate, sample_diversity
    from ..core.world.scenes import style_renders

    rows, grids = [], {}
    for domain in FAIR_DOMAINS:
        reference = style_renders(REFERENCE_RENDERS, stream="reference", domain=domain)
        for shots in SHOTS:
            images, _ = targets(shots, domain)
            threshold = copy_threshold(shots, domain)
            grids[f"{domain}_targets_{shots}_shots"] = (images, [f"{domain} target {i}" for i in range(shots)])
            for method in METHODS:
                log.info("sge: %s, %s, %d shots", domain, method, shots)
                result = run_isolated(run_method, method, shots, options.model, options.quick, options.seed, domain)
                samples, info = result["samples"], dict(result["info"])
                rows.append({"domain": domain, "method": method, "shots": shots,
                             "domain_hit": domain_hit_rate(samples, domain),
                             "own_row_hit": info.pop("own_row", None), "mean_row_hit": info.pop("mean_row", None),
                             "domain_fd": domain_fidelity(samples, reference),
                             "diversity": sample_diversity(samples, images),
                             "copy_rate": copy_rate(samples, images, threshold),
                             "seconds_invert": result["seconds_invert"],
                             "seconds_per_image": result["seconds_per_image"], **info})
                log.info("sge: %s", rows[-1])
                shown = samples[:16]
                grids[f"{domain} {method} {shots} shots"] = (
                    shown, [f"{domain}, {method}, {shots} shots, sample {i}" for i in range(len(shown))])
    notes = (f"Domains {', '.join(FAIR_DOMAINS)} (style_renders(shots, domain=...): the world's creatures and shapes "
             f"at a place no caption names), {SAMPLES[options.quick]} samples per method (seeds {SAMPLE_SEED}+); "
             f"domain_fd against {REFERENCE_RENDERS} other renders of the domain. SGE: the default settings "
             "(METHODS.md: one segment per step, 120 epochs, lr 0.05, s 2, lambda 1, relax 0.05, fresh q-noise, "
             "empty prompt), "
             f"the window carried by step index or by noise level; own_row_hit: {OWN_ROW_SAMPLES} samples per target "
             "from its own row, no relaxing; mean_row_hit: the rows' mean. LoRA: "
             f"{LORA}, {LORA_STEPS[options.quick]} steps, captions with the trigger '{TRIGGER}' as the place; sampled "
             f"from other scenes' captions with the trigger, CFG {EVAL_CFG}. img2img: a random target noised to the "
             "step-mapped window's top with fresh noise, denoised with the empty prompt (as SGE). text: other "
             f"scenes' captions with the nearest captioned place ({CLOSEST_WORDS}), CFG {EVAL_CFG}. copy_rate "
             "threshold: the median pixel distance between two renders of one target scene. Each method in a fresh "
             "process.")
    return rows, grids, notes, {}
