"""Bench suite `guidance`: the Personalization Guidance Sampler's three modes (personalization guidance,
CFG, autoguidance) on concepts of three fine-tuning strategies (DreamBooth-LoRA, full DreamBooth,
Lipschitz Finetune) for the world's held-out subjects (METHODS.md §3, WORLD.md's metrics).

Each strategy runs in a fresh process: it trains one concept per subject, then generates the same
evaluation prompts with the same seeds at every point of the sweep (so points differ only by their
guidance). A point's seconds_per_image is its own generation time in that process, each mode's points
spread evenly over the run. Peak memory is measured once per (strategy, mode) at its probe point on the
first subject: the most memory the sampling call's tensors held at once (GPU: allocated memory; CPU:
counted exactly by `measure_tensor_memory`), the model's own weights not included.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .common import (
    SETTINGS,
    STEPS,
    SUBJECTS,
    TRAIN_FIELDS,
    TRAINING_IMAGES,
    run_isolated,
    subject_words,
    train_method,
)

log = logging.getLogger("conceptkit.bench")

# concept kind -> (fine-tuning method, its settings, chosen once; see README)
KINDS = {
    "lora": ("dreambooth_lora", SETTINGS["dreambooth_lora"]),
    "full": ("dreambooth_full", dict(trainable="full", learning_rate=1e-4)),
    "lipschitz": ("lipschitz", SETTINGS["lipschitz"]),
}
EVAL_IMAGES, EVAL_STEPS = 8, 25
SWEEP = {
    "cfg": [(w, None) for w in (3.0, 5.0, 7.5, 10.0)],
    "autoguidance": [(w, omega) for w in (1.5, 2.0, 3.0) for omega in (0.0, 0.5)],
    "personalization": [(w, omega) for w in (3.0, 5.0, 7.5) for omega in (0.25, 0.5, 0.75)]
    + [(5.0, (0.25, 0.75)), (5.0, (0.75, 0.25))],
}
QUICK_SWEEP = {"cfg": [(5.0, None)], "autoguidance": [(2.0, 0.5)], "personalization": [(5.0, 0.5)]}
PROBE = {"cfg": (7.5, None), "autoguidance": (2.0, 0.5), "personalization": (7.5, 0.5)}  # shown and measured


def _guidance(mode: str, w: float, omega):
    from ..core.methods.personalization_guidance import guidance_for

    start, end = omega if isinstance(omega, tuple) else (omega, None)
    return guidance_for(mode, w, 1.0 if start is None else start, end)


def omega_label(omega) -> str:
    if omega is None:
        return "-"
    return f"{omega[0]}->{omega[1]}" if isinstance(omega, tuple) else str(omega)


def interleaved(sweep: dict) -> list[tuple[str, float, object]]:
    """The sweep's points in an order that spreads each mode's points evenly over the run (a mode with 4 points
    and one with 11 both span it from start to end), so slow drifts of the machine hit every mode alike."""
    placed = [((i + 0.5) / len(points), m, (mode, w, omega))
              for m, (mode, points) in enumerate(sweep.items()) for i, (w, omega) in enumerate(points)]
    return [point for *_, point in sorted(placed, key=lambda p: p[:2])]


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_kind(kind: str, model_source: str | None, quick: bool, seed: int, subjects: tuple[int, ...]
             ) -> tuple[list[dict], dict[str, float], np.ndarray]:
    """Train one concept per subject with `kind`'s method and score every sweep point (in its own process).
    Returns the scores, the peak memory of each mode's probe point (first subject) and images to show."""
    import torch

    from ..core.concepts import apply_concept
    from ..core.metrics import measure_tensor_memory
    from ..core.model import load_model
    from ..core.sampling import sample
    from ..core.training import TrainConfig
    from ..core.world.metrics import as_uint8, mean_text_fidelity, subject_fidelity
    from ..core.world.subjects import evaluation_scenes, reference_renders, training_renders

    torch.manual_seed(seed)
    model = load_model(model_source)
    method, settings = KINDS[kind]
    settings = dict(settings)
    train = {k: settings.pop(k) for k in list(settings) if k in TRAIN_FIELDS}
    points = interleaved(QUICK_SWEEP if quick else SWEEP)
    results, shown, peaks = [], [], {}
    for subject in subjects:
        images, captions = training_renders(subject, TRAINING_IMAGES)
        token = f"<s{subject}>"
        config = TrainConfig(trigger=token, class_word="creature", captions=captions, steps=STEPS[quick],
                             batch_size=4, seed=seed, **train)
        concept = train_method(model, torch.from_numpy(images).float() / 255, config, method, **settings).concept
        tuned = apply_concept(model, concept)
        scenes = evaluation_scenes(subject, subject_words(method, config), EVAL_IMAGES)
        prompts, references = [s.caption() for s in scenes], reference_renders(subject)
        sample(tuned, prompts[:2], seed=seed, steps=2)  # warm-up, not timed
        by_mode = {}
        for mode, w, omega in points:
            _synchronize(model.device)
            start = time.perf_counter()
            generated = sample(tuned, prompts, seed=seed, steps=EVAL_STEPS, guidance=_guidance(mode, w, omega)).images
            _synchronize(model.device)
            seconds = time.perf_counter() - start
            generated = as_uint8(generated)
            results.append({"mode": mode, "concept_kind": kind, "w": w, "omega": omega_label(omega),
                            "subject": subject, "subject_fidelity": subject_fidelity(generated, references),
                            "text_fidelity": mean_text_fidelity(generated, scenes),
                            "seconds_per_image": seconds / len(prompts)})
            if quick or (w, omega) == PROBE[mode]:
                by_mode[mode] = generated[:4]
        for mode in PROBE if not peaks else ():
            with measure_tensor_memory(model.device) as cost:
                sample(tuned, prompts, seed=seed, steps=EVAL_STEPS, guidance=_guidance(mode, *PROBE[mode]))
            peaks[mode] = cost.peak_mb
        shown += [by_mode[mode] for mode in PROBE]
        log.info("guidance: %s subject %d scored at %d points", kind, subject, len(points))
    return results, peaks, np.concatenate(shown)


def mean_rows(results: list[dict], peaks: dict[tuple[str, str], float]) -> list[dict]:
    """One row per (kind, mode, w, omega): the mean over subjects."""
    keys = list(dict.fromkeys((r["concept_kind"], r["mode"], r["w"], r["omega"]) for r in results))
    rows = []
    for kind, mode, w, omega in keys:
        group = [r for r in results if (r["concept_kind"], r["mode"], r["w"], r["omega"]) == (kind, mode, w, omega)]
        rows.append({"mode": mode, "concept_kind": kind, "w": w, "omega": omega,
                     **{k: float(np.mean([r[k] for r in group]))
                        for k in ("subject_fidelity", "text_fidelity", "seconds_per_image")},
                     "peak_mb": peaks[kind, mode]})
    return rows


def beats_baselines(point: dict, baselines: list[dict]) -> bool:
    """Whether a personalization-guidance point has higher subject fidelity than every CFG and autoguidance
    point of equal or higher text fidelity (or, where none reaches its text fidelity, than the baseline point
    with the highest text fidelity)."""
    rivals = [b for b in baselines if b["text_fidelity"] >= point["text_fidelity"]]
    if not rivals:
        top = max(b["text_fidelity"] for b in baselines)
        rivals = [b for b in baselines if b["text_fidelity"] == top]
    return point["subject_fidelity"] > max(b["subject_fidelity"] for b in rivals)


def quality_verdicts(results: list[dict]) -> dict[str, list[int]]:
    """kind -> the subjects for which some personalization-guidance point beats the baselines."""
    verdicts = {}
    for kind in dict.fromkeys(r["concept_kind"] for r in results):
        verdicts[kind] = []
        for subject in dict.fromkeys(r["subject"] for r in results):
            points = [r for r in results if r["concept_kind"] == kind and r["subject"] == subject]
            baselines = [p for p in points if p["mode"] != "personalization"]
            if any(beats_baselines(p, baselines) for p in points if p["mode"] == "personalization"):
                verdicts[kind].append(subject)
    return verdicts


def cost_ratios(rows: list[dict]) -> dict[str, dict[str, float]]:
    """kind -> personalization / CFG ratios of seconds per image (mean over points) and peak memory."""
    ratios = {}
    for kind in dict.fromkeys(r["concept_kind"] for r in rows):
        def mean(mode, key, kind=kind):
            return float(np.mean([r[key] for r in rows if r["concept_kind"] == kind and r["mode"] == mode]))

        ratios[kind] = {"seconds": mean("personalization", "seconds_per_image") / mean("cfg", "seconds_per_image"),
                        "peak_mb": mean("personalization", "peak_mb") / max(mean("cfg", "peak_mb"), 1e-9)}
    return ratios


def guidance_suite(options):
    from .frontier import frontier_plot

    subjects = tuple(range(SUBJECTS[options.quick]))
    results, grids, peaks = [], {}, {}
    for kind in KINDS:
        log.info("guidance: training %s concepts on %d subjects and sweeping", kind, len(subjects))
        found, kind_peaks, images = run_isolated(run_kind, kind, options.model, options.quick, options.seed, subjects)
        results += found
        peaks.update({(kind, mode): peak for mode, peak in kind_peaks.items()})
        grids[f"{kind}_concepts"] = (images, [f"{kind} concept, subject {s}: {m}" for s in subjects for m in PROBE
                                              for _ in range(4)])
    rows = mean_rows(results, peaks)
    verdicts = quality_verdicts(results)
    ratios = cost_ratios(rows)
    lines = [
        f"{len(subjects)} held-out creatures, concepts trained with {STEPS[options.quick]} steps "
        f"({ {k: v[0] for k, v in KINDS.items()} }, settings { {k: v[1] for k, v in KINDS.items()} }); "
        f"{EVAL_IMAGES} evaluation prompts per subject, DDIM {EVAL_STEPS} steps, the same seeds at every point. "
        "Rows are means over subjects. omega 'a->b' is linear over the steps. seconds_per_image: generation time of "
        "the point (each mode's points spread evenly over the run); peak_mb: the most memory the tensors of one "
        f"sampling call of {EVAL_IMAGES} images held at once (weights not included), at the probe point {PROBE} "
        "(w, omega).",
        "", "Cost, personalization guidance / CFG in the same run (gate: seconds <= 1.05, memory <= 1.1 for LoRA):",
        "",
        *[f"- {kind}: seconds {r['seconds']:.3f}x, peak memory {r['peak_mb']:.3f}x" for kind, r in ratios.items()],
        "", "Quality: subjects for which some personalization-guidance point has higher subject fidelity than every "
        "CFG and autoguidance point of equal or higher text fidelity (gate: at least 3 of 4):", "",
        *[f"- {kind}: {len(s)} of {len(subjects)} (subjects {s})" for kind, s in verdicts.items()],
        "", "![frontier](frontier.png)", "", "Per subject:", "",
        "| kind | subject | mode | w | omega | subject_fidelity | text_fidelity |", "|---|---|---|---|---|---|---|",
        *[f"| {r['concept_kind']} | {r['subject']} | {r['mode']} | {r['w']} | {r['omega']} | "
          f"{r['subject_fidelity']:.3f} | {r['text_fidelity']:.3f} |" for r in results],
    ]
    return rows, grids, "\n".join(lines), {"frontier.png": frontier_plot(rows)}
