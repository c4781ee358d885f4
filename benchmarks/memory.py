"""Bench suite `memory`: Concept Memory (L2DM, METHODS.md §5) against naive sequential fine-tuning and one LoRA per
concept applied together, on 5 held-out creatures (20-24, no other suite's) learned in sequence, 4 images each.

- concept_memory: `learn` with the defaults (each task fine-tunes the UNet; replay, elastic distillation, the bank,
  the bound on each task's weight offset, pair composites), sampled with the artist.
- naive_sequential: the same sequence with nothing protecting earlier concepts (replay, distillation, the
  offset bound and the pair composites off, no artist): each task fine-tunes the UNet on top of the previous ones.
- lora_per_concept: one LoRA per concept trained on the base model alone, all applied together.
Every method trains with the same steps and batch; the two memories with the memory's default learning rate, the
LoRAs with TRAIN's. After each task: the subject
fidelity of every concept so far (8 evaluation prompts each) and drift on prompts without triggers; at the end,
prompts with two learned concepts (every pair of them, 8 prompts each): both present, pair
fidelity, homogenization; for concept_memory also with the artist off (the ablation)."""

from __future__ import annotations

import itertools
import logging
import time

import numpy as np

from .common import EVAL_CFG, EVAL_IMAGES, EVAL_STEPS, drift_scenes, generate, run_isolated

log = logging.getLogger("conceptkit.bench")

SUBJECTS = {False: (20, 21, 22, 23, 24), True: (20, 21)}
STEPS = {False: 200, True: 30}
TRAIN = dict(rank=16, learning_rate=5e-3, batch_size=4)  # the merged LoRAs
MEMORY = dict(batch_size=4)  # the memories: what they train and its learning rate as the memory's defaults
PAIR_IMAGES = {False: 8, True: 2}
METHODS = ("concept_memory", "naive_sequential", "lora_per_concept")
CALIBRATION_SUBJECTS = {False: (30, 31, 32, 33, 34), True: (30, 31)}  # no bench suite's creatures
PENALTY_GRID = (3e-5, 1e-4, 3e-4)


def token(subject: int) -> str:
    return f"<m{subject}>"


def named(subject: int) -> str:
    """The subject's identifier in prompts: its trigger beside the class word (both recipes start it rare)."""
    return f"{token(subject)} creature"


def evaluated(tuned, subject: int, seed: int):
    """A learned subject drawn from its EVAL_IMAGES evaluation prompts, and its subject fidelity."""
    from ..core.world.metrics import subject_fidelity
    from ..core.world.subjects import evaluation_scenes, reference_renders

    generated = generate(tuned, evaluation_scenes(subject, named(subject), EVAL_IMAGES), seed)
    return generated, subject_fidelity(generated, reference_renders(subject))


def run_method(method: str, model_source, quick: bool, seed: int) -> dict:
    import tempfile
    from pathlib import Path

    import torch

    from ..core.concepts import apply_concept
    from ..core.methods.concept_memory import LearnSettings, MemoryStore, learn, memory_model
    from ..core.model import load_model
    from ..core.recipes import train_recipe
    from ..core.training import TrainConfig
    from ..core.world.metrics import drift, pair_fidelity
    from ..core.world.subjects import pair_scenes, reference_renders, subject_seed, training_renders

    torch.manual_seed(seed)
    model = load_model(model_source)
    subjects = SUBJECTS[quick]
    base_drift = generate(model, drift_scenes(), seed)
    rows, seconds, concepts, shown = [], [], [], {}
    folder = Path(tempfile.mkdtemp())
    store = MemoryStore.open_or_create(folder, "bench", model)
    learned_model = model
    for task, subject in enumerate(subjects):
        images, captions = training_renders(subject, 4)
        pixels = torch.from_numpy(images).float() / 255
        start = time.perf_counter()
        if method == "lora_per_concept":
            config = TrainConfig(trigger=token(subject), class_word="creature", captions=captions,
                                 steps=STEPS[quick], seed=seed, trainable="lora", **TRAIN)
            concepts.append(train_recipe(model, pixels, config, "dreambooth_lora").concept)
            learned_model = model
            for concept in concepts:
                learned_model = apply_concept(learned_model, concept)
        else:
            protect = method == "concept_memory"
            protection = {} if protect else {"replay_weight": 0.0, "distill_weight": 0.0, "offset_penalty": 0.0,
                                             "pair_composites": False}
            settings = LearnSettings(steps=STEPS[quick], seed=seed, **protection, **MEMORY)
            learn(store, model, pixels, token(subject), "creature", settings, captions=captions)
            learned_model = memory_model(model, store, artist=protect)
        seconds.append(time.perf_counter() - start)
        for earlier in subjects[:task + 1]:
            generated, fidelity = evaluated(learned_model, earlier, seed)
            rows.append({"method": method, "task": task + 1, "concept": earlier, "subject_fidelity": fidelity})
            if task == len(subjects) - 1:
                shown[earlier] = generated[:4]
        moved = drift(base_drift, generate(learned_model, drift_scenes(), seed), drift_scenes())
        for row in rows:
            if row["task"] == task + 1:
                row.update(moved)
        log.info("memory: %s task %d: %s", method, task + 1,
                 [round(r["subject_fidelity"], 3) for r in rows if r["task"] == task + 1])
    references = {subject_seed(s): reference_renders(s) for s in subjects}
    pairs = {}
    variants = {"": learned_model}
    if method == "concept_memory":
        variants[" (artist off)"] = memory_model(model, store, artist=False)
    for suffix, tuned in variants.items():
        scores, images = [], []
        for a, b in itertools.combinations(subjects, 2):
            scenes = pair_scenes((a, named(a)), (b, named(b)), PAIR_IMAGES[quick])
            generated = generate(tuned, scenes, seed)
            scores.append(pair_fidelity(generated, scenes, references))
            if len(images) < 4:
                images.append(generated[:2])
        pairs[suffix] = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
        shown[f"pairs{suffix}"] = np.concatenate(images)
    return {"rows": rows, "pairs": pairs, "seconds": seconds, "shown": shown}


def memory_suite(options):
    from ..core.world.metrics import forgetting

    rows, grids, curves = [], {}, {}
    subjects = SUBJECTS[options.quick]
    for method in METHODS:
        log.info("memory: %s on %d subjects", method, len(subjects))
        result = run_isolated(run_method, method, options.model, options.quick, options.seed)
        table = {(r["task"], r["concept"]): r["subject_fidelity"] for r in result["rows"]}
        after = [[table[(k + 1, subjects[j])] for j in range(k + 1)] for k in range(len(subjects))]
        drops = forgetting(after)
        curves[method] = [float(np.mean(a)) for a in after]
        for row in result["rows"]:
            final = row["task"] == len(subjects)
            drop = drops[subjects.index(row["concept"])] if final else None
            rows.append({**row, "forgetting": drop, "pair_both_present": None, "pair_fidelity": None,
                         "homogenization": None, "seconds": None})
        alone = float(np.mean([r["subject_fidelity"] for r in result["rows"] if r["task"] == len(subjects)]))
        for suffix, pair in result["pairs"].items():
            rows.append({"method": method + suffix, "task": len(subjects), "concept": "pairs",
                         "subject_fidelity": None, "forgetting": float(np.mean(drops[:-1])),
                         "drift_text": rows[-1]["drift_text"], "drift_fd": rows[-1]["drift_fd"],
                         "pair_both_present": pair["both_present"], "pair_fidelity": pair["pair_fidelity"],
                         "likeness_alone": alone,
                         "homogenization": pair["homogenization"], "seconds": sum(result["seconds"]),
                         "seconds_first": result["seconds"][0], "seconds_last": result["seconds"][-1]})
        for name, images in result["shown"].items():
            grids[f"{method}_{name}"] = (images, [f"{method}, {name}, image {i}" for i in range(len(images))])
    notes = (f"Subjects {subjects} learned in this order, 4 training renders each, {STEPS[options.quick]} steps per "
             f"concept, the memories trained with their defaults {MEMORY} (the UNet), the merged LoRAs {TRAIN}; "
             f"subject fidelity on {EVAL_IMAGES} evaluation prompts per concept after every "
             f"task (DDIM {EVAL_STEPS}, CFG {EVAL_CFG}); forgetting = mean over concepts 1..4 of (fidelity just after "
             "learning it - fidelity after the last task); drift against the base model on prompts without triggers; "
             f"pairs: every pair of the concepts, {PAIR_IMAGES[options.quick]} prompts each. seconds: all "
             "training (and the bank) of the method; seconds_first / seconds_last: learning the first / the last "
             "concept. Mean subject fidelity after each task: "
             + "; ".join(f"{m}: {', '.join(f'{v:.3f}' for v in c)}" for m, c in curves.items()))
    return rows, grids, notes, {"forgetting_curve.png": _curve_plot(curves)}


def _curve_plot(curves: dict[str, list[float]]):
    """Mean subject fidelity of the concepts learned so far, after each task, one line per method."""
    from PIL import Image, ImageDraw

    width, height, pad = 480, 300, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    values = [v for c in curves.values() for v in c]
    low, high = min(values + [0.0]), max(values + [1e-6])
    tasks = max(len(c) for c in curves.values())
    colours = [(200, 40, 40), (40, 120, 200), (40, 160, 60)]

    def point(k: int, v: float) -> tuple[float, float]:
        x = pad + (width - 2 * pad) * (k / max(tasks - 1, 1))
        return x, height - pad - (height - 2 * pad) * (v - low) / (high - low or 1)

    draw.line([(pad, height - pad), (width - pad, height - pad)], fill="black")
    draw.line([(pad, pad), (pad, height - pad)], fill="black")
    for (name, curve), colour in zip(curves.items(), colours, strict=False):
        draw.line([point(k, v) for k, v in enumerate(curve)], fill=colour, width=2)
        draw.text((pad + 5, pad - 30 + 10 * list(curves).index(name)), name, fill=colour)
    draw.text((width // 2 - 40, height - pad + 10), "after task 1..N", fill="black")
    draw.text((2, pad - 6), f"{high:.2f}", fill="black")
    draw.text((2, height - pad - 6), f"{low:.2f}", fill="black")
    draw.text((2, height // 2 - 6), "mean\nfidelity", fill="black")
    return image


def learned_in_sequence(penalty: float, model_source, quick: bool, seed: int) -> dict:
    """Concept Memory with offset_penalty `penalty` on the calibration creatures: each concept's likeness just
    after it is learned and after the last task (sampled as the bench samples, artist on)."""
    import tempfile
    from pathlib import Path

    import torch

    from ..core.methods.concept_memory import LearnSettings, MemoryStore, learn, memory_model
    from ..core.model import load_model
    from ..core.world.subjects import training_renders

    torch.manual_seed(seed)
    model = load_model(model_source)
    subjects = CALIBRATION_SUBJECTS[quick]
    store = MemoryStore.open_or_create(Path(tempfile.mkdtemp()), "calibration", model)
    settings = LearnSettings(steps=STEPS[quick], seed=seed, offset_penalty=penalty, **MEMORY)
    fresh = []
    for subject in subjects:
        images, captions = training_renders(subject, 4)
        learn(store, model, torch.from_numpy(images).float() / 255, token(subject), "creature", settings,
              captions=captions)
        tuned = memory_model(model, store, artist=True)
        fresh.append(evaluated(tuned, subject, seed)[1])
    final = [evaluated(tuned, s, seed)[1] for s in subjects[:-1]] + fresh[-1:]
    return {"fresh": fresh, "final": final}


def penalty_suite(options):
    """Suite `memory_penalty`: Concept Memory's offset_penalty chosen on calibration creatures, by a fixed rule:
    the penalty of PENALTY_GRID whose concepts are drawn best after the last task (mean likeness)."""
    from ..core.world.metrics import forgetting

    rows = []
    for penalty in PENALTY_GRID:
        result = run_isolated(learned_in_sequence, penalty, options.model, options.quick, options.seed)
        # forgetting reads each concept just after it was learned (after[k][k]) and all at the end (after[-1])
        after = [[float("nan")] * k + [f] for k, f in enumerate(result["fresh"][:-1])] + [result["final"]]
        rows.append({"offset_penalty": penalty, "forgetting": float(np.mean(forgetting(after)[:-1])),
                     "likeness_fresh": float(np.mean(result["fresh"])),
                     "likeness_final": float(np.mean(result["final"]))})
        log.info("memory_penalty: %s", rows[-1])
    chosen = max(rows, key=lambda r: r["likeness_final"])["offset_penalty"]
    notes = (f"Calibration creatures {CALIBRATION_SUBJECTS[options.quick]} (no bench suite's), learned in sequence, "
             f"{STEPS[options.quick]} steps each, the memory's defaults {MEMORY}; likeness on {EVAL_IMAGES} "
             "evaluation prompts just "
             "after each concept is learned (fresh) and after the last task (final); forgetting = mean over all "
             "but the last concept of fresh - final. Rule: the penalty with the best final likeness. Chosen: "
             f"{chosen} (the shipped default is LearnSettings.offset_penalty).")
    return rows, {}, notes, {}
