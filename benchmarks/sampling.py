"""Bench suite `sampling`: ConceptKit Sample against diffusers' own StableDiffusionPipeline on the embedded
model: the same scheduler (DDIM), seeds, steps and CFG, in one process, the two interleaved (each round times
both, in alternating order), for batch 1 and batch 8. Rows: the largest pixel difference between the two and
the ratio of their total times (ConceptKit / diffusers)."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("conceptkit.bench")

BATCHES = (1, 8)
ROUNDS = {False: 30, True: 3}
STEPS, SCALE, SEED = 25, 5.0, 0
PROMPT = "a large red star in the centre, blue background"


def sampling_suite(options):
    import torch
    from diffusers import StableDiffusionPipeline

    from ..core.model import load_model
    from ..core.sampling import CFG, make_scheduler, sample

    model = load_model(options.model, device="auto")
    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0],
                                   unet=model.unet, scheduler=make_scheduler(model.scheduler_config, "ddim"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    seed = options.seed + SEED

    def ours(batch: int) -> torch.Tensor:
        return sample(model, PROMPT, batch_size=batch, seed=seed, steps=STEPS, guidance=CFG(SCALE)).images

    def theirs(batch: int) -> torch.Tensor:
        generators = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
        out = pipe(PROMPT, num_images_per_prompt=batch, num_inference_steps=STEPS, guidance_scale=SCALE,
                   generator=generators, output_type="pt").images
        return out.permute(0, 2, 3, 1).cpu()

    rows = []
    for batch in BATCHES:
        ours(batch), theirs(batch)  # warm-up, not timed
        times = {ours: 0.0, theirs: 0.0}
        for round_ in range(ROUNDS[options.quick]):
            pair = (ours, theirs) if round_ % 2 == 0 else (theirs, ours)
            for run in pair:
                start = time.perf_counter()
                images = run(batch)
                times[run] += time.perf_counter() - start
                if run is ours:
                    got = images
                else:
                    expected = images
        rows.append({"batch": batch, "max_abs_diff": float((got - expected).abs().max()),
                     "time_ratio": times[ours] / times[theirs]})
        log.info("sampling: %s", rows[-1])
    notes = (f"Embedded model, DDIM {STEPS} steps, CFG {SCALE}, seeds {seed}.., prompt '{PROMPT}'; "
             f"{ROUNDS[options.quick]} rounds per batch size, each timing both in alternating order. max_abs_diff: "
             "the largest difference of any pixel (0..1) between ConceptKit Sample and StableDiffusionPipeline; "
             "time_ratio: ConceptKit's total time / diffusers' total time.")
    return rows, {}, notes, {}
