"""`conceptkit world check`: the gates a world edition must pass before any method is benched on it (WORLD.md,
"what the world must be able to express"), each printed with its spread; exit status 0 only when all hold.

- attributes: the base bench's per-attribute accuracy (seen >= 0.90, held-out >= 0.80);
- identity: the identity network separates held-out creatures (ROC AUC >= 0.95) on fresh renders and on VAE
  round trips of them (what a latent model can draw);
- text path: moving a named creature's embedding by 0.3 of a typical word's norm changes the drawn creature
  (identity cosine to the unmoved one, same seed, < 0.8);
- domains: each unseen SGE domain commits inside the guidance window: img2img of a target from the window's
  low end keeps it (>= 0.90), from the window's top without guidance no more often than the base model draws
  it unprompted (+ 0.05).
- learning: on held-out subjects, textual inversion with 1,000 steps reaches >= 0.5x DreamBooth-LoRA's subject
  fidelity and >= 4x the class word's alone; the base model prompted with a subject's sayable traits lands
  between the class word and DreamBooth-LoRA (words reach part of an identity, detail needs learning);
- pairs: the base model draws two named creatures with both present at their places (>= 0.80); one
  DreamBooth-LoRA of two held-out subjects trained together, with Cut-Mix composites of the two (SVDiff: each
  cut from its own renders, pasted side by side, the caption naming both), keeps homogenization <= 0.25 (printed
  beside it: the same without composites, with triggers starting at creature names, and concepts trained apart
  and applied together);
- each unseen domain is learnable: a 10-shot LoRA draws it in >= 0.80 of its images.

The domain gates are required of the fair domains (FAIR_DOMAINS, at least two, those the SGE bench uses); the
other candidates are checked and printed, not required: a candidate the world cannot express is a finding about
the candidate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..core.model import load_model
from ..core.sampling import CFG, sample
from ..core.world.checkers import read_domain
from ..core.world.metrics import as_uint8, identity_features
from ..core.world.scenes import Scene, WorldObject, background_colours, style_renders
from ..core.world.vocabulary import (
    CAPTION_WORDS,
    CREATURE_NAMES,
    FAIR_DOMAINS,
    HELDOUT_INSTANCE_SEEDS,
    NAMED_CREATURE_SEEDS,
)
from .base import base_suite
from .common import SETTINGS, generate, subject_words, train_method
from .sge import run_method as sge_run_method

log = logging.getLogger("conceptkit.world_check")
DOMAIN_CANDIDATES = ("big_checks", "snowline", "top_left", "bottom_right")  # checked; zigzag is known unfair
STEPS, GUIDANCE = 25, 5.0
TI_STEPS, LORA_STEPS = 1000, 300
CUT_MIX_COMPOSITES = 32  # beside the two subjects' 4 renders each (16 left one pair of four blended: 0.458)


@dataclass
class Gate:
    name: str
    value: float
    spread: float  # standard deviation over seeds and subjects (0 where one figure is all there is)
    bound: str  # e.g. ">= 0.95"
    holds: bool
    required: bool = True  # False: printed, not part of the check's verdict (a domain candidate not claimed fair)


def roc_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    scores = np.concatenate([positives, negatives])
    ranks = scores.argsort().argsort() + 1
    return float((ranks[:len(positives)].sum() - len(positives) * (len(positives) + 1) / 2)
                 / (len(positives) * len(negatives)))


def _views(seeds: list[int], rng: np.random.Generator) -> np.ndarray:
    """One render of each creature on a random background (not its body's colour), place and pattern."""
    scenes = [Scene(str(rng.choice(background_colours(s))), str(rng.choice(["plain", "striped", "checked"])),
                    (WorldObject(str(rng.choice(["left", "right", "centre", "top", "bottom"])), instance=s),))
              for s in seeds]
    return np.stack([scene.render(rng) for scene in scenes])


def _round_trip(model, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().to(model.device) / 127.5 - 1
        y = model.vae.decode(model.vae.encode(x).latent_dist.mean).sample
    return as_uint8(((y + 1) / 2).permute(0, 2, 3, 1))


def identity_gates(model, count: int) -> list[Gate]:
    seeds = list(HELDOUT_INSTANCE_SEEDS[:count])
    rng = np.random.default_rng(5)
    first, second = _views(seeds, rng), _views(seeds, rng)
    gates = []
    for name, (a, b) in {"identity AUC, fresh renders": (first, second),
                         "identity AUC, VAE round trips": (_round_trip(model, first), _round_trip(model, second))
                         }.items():
        similarity = (identity_features(a) @ identity_features(b).T).numpy()
        positives, negatives = np.diag(similarity), similarity[~np.eye(len(seeds), dtype=bool)]
        auc = roc_auc(positives, negatives)
        halves = [roc_auc(positives[i::2], similarity[i::2][:, 1 - i::2].reshape(-1)) for i in (0, 1)]
        gates.append(Gate(name, auc, float(np.std(halves)), ">= 0.95", auc >= 0.95))
    return gates


def typical_word_norm(tokenizer, table: torch.Tensor) -> float:
    """A typical word's input-embedding norm: the mean over the world's ordinary words (colours, shapes, places,
    traits), not the names (what the text-path gate moves, and what identity vectors are scaled against)."""
    word_ids = [tokenizer.convert_tokens_to_ids(w + "</w>") for w in CAPTION_WORDS if w not in CREATURE_NAMES]
    return float(table[word_ids].detach().norm(dim=1).mean())


def text_path_gate(model, names: int, directions: int, seeds: int) -> Gate:
    """Identity cosine between a named creature drawn as trained and with its embedding moved by 0.3 of a typical
    word's norm in a random direction, same prompt and seed."""
    tokenizer, encoder = model.tokenizers[0], model.text_encoders[0]
    table = encoder.get_input_embeddings().weight
    typical = typical_word_norm(tokenizer, table)
    gen = torch.Generator().manual_seed(0)
    cosines = []
    for name, seed in zip(CREATURE_NAMES[:names], NAMED_CREATURE_SEEDS[:names], strict=True):
        row = tokenizer.convert_tokens_to_ids(name + "</w>")
        prompt = f"{name} in the centre, {background_colours(seed)[0]} background"
        kept = table[row].detach().clone()
        drawn = as_uint8(sample(model, [prompt] * seeds, seed=0, steps=STEPS, guidance=CFG(GUIDANCE)).images)
        for _ in range(directions):
            direction = torch.randn(table.shape[1], generator=gen)
            with torch.no_grad():
                table[row] = kept + 0.3 * typical * direction / direction.norm()
            try:
                moved = as_uint8(sample(model, [prompt] * seeds, seed=0, steps=STEPS, guidance=CFG(GUIDANCE)).images)
            finally:
                with torch.no_grad():
                    table[row] = kept
            cosines += (identity_features(drawn) * identity_features(moved)).sum(1).tolist()
    value = float(np.mean(cosines))
    return Gate("text path: identity cosine after moving a name by 0.3 word norm", value, float(np.std(cosines)),
                "< 0.8", value < 0.8)


def domain_gates(model, count: int, domains: tuple[str, ...] = DOMAIN_CANDIDATES) -> list[Gate]:
    """Img2img of a domain's targets from the guidance window's low end and top (the SGE Inverter's window on
    STEPS steps), without guidance (empty prompt, CFG 1, as SGE Sample draws), against the base model's rate."""
    from diffusers import DDIMScheduler

    from ..core.methods.sge_inverter import map_window

    scheduler = DDIMScheduler.from_config(model.scheduler_config)
    scheduler.set_timesteps(STEPS)
    window = map_window(scheduler.timesteps.cpu(), scheduler.alphas_cumprod, "noise")
    unprompted = as_uint8(sample(model, [""] * count, seed=100, steps=STEPS, guidance=CFG(1.0)).images)
    gates = []
    for domain in domains:
        targets = style_renders(count, seed=7, domain=domain)
        with torch.no_grad():
            x = torch.from_numpy(targets).permute(0, 3, 1, 2).float().to(model.device) / 127.5 - 1
            latents = model.vae.encode(x).latent_dist.mean * model.vae.config.scaling_factor
        base_rate = float(np.mean([read_domain(i) == domain for i in unprompted]))
        rates = {}
        for where, start_step in (("low end", STEPS - 1 - window.start), ("top", STEPS - window.end)):
            images = as_uint8(sample(model, [""] * count, seed=0, steps=STEPS, guidance=CFG(1.0),
                                     init_latents=latents, start_step=start_step).images)
            hits = np.array([read_domain(i) == domain for i in images], float)
            rates[where] = (float(hits.mean()), float(hits.std() / np.sqrt(len(hits))))
        fair = domain in FAIR_DOMAINS  # a candidate's gates are printed, not required
        gates.append(Gate(f"{domain}: kept from the window's low end", *rates["low end"], ">= 0.90",
                          rates["low end"][0] >= 0.90, fair))
        gates.append(Gate(f"{domain}: kept from the window's top, no guidance (base draws it {base_rate:.2f})",
                          *rates["top"], f"<= {base_rate + 0.05:.2f}", rates["top"][0] <= base_rate + 0.05, fair))
    return gates


def _spread(values) -> float:
    return float(np.std(values))


def _train(model, subject: int, method: str, steps: int, seed: int):
    """A subject's concept by `method` ("textual_inversion" or "dreambooth_lora", the finetune bench's settings)
    and the words that name it in prompts."""
    from ..core.training import TrainConfig
    from ..core.world.subjects import training_renders
    from .common import TRAINING_IMAGES, subject_words

    images, captions = training_renders(subject, TRAINING_IMAGES)
    settings = dict(SETTINGS[method])
    config = TrainConfig(trigger=f"<s{subject}>", class_word="creature", captions=captions, steps=steps,
                         batch_size=4, seed=seed, **settings)
    concept = train_method(model, torch.from_numpy(images).float() / 255, config, method).concept
    return concept, subject_words(method, config)


def learning_gates(model, subjects: tuple[int, ...], ti_steps: int, lora_steps: int, seed: int
                   ) -> tuple[list[Gate], dict]:
    """Subject fidelity per subject of: the class word alone, the subject's sayable traits, textual inversion,
    DreamBooth-LoRA (whose concepts, with the words naming them, the pair gates reuse: concepts[kind][subject])."""
    from ..core.concepts import apply_concept
    from ..core.world.metrics import subject_fidelity
    from ..core.world.render import creature_traits
    from ..core.world.subjects import evaluation_scenes, reference_renders, subject_seed

    scores = {k: [] for k in ("class word", "traits", "textual inversion", "dreambooth-lora")}
    concepts = {"textual inversion": {}, "dreambooth-lora": {}}
    for subject in subjects:
        references = reference_renders(subject)
        traits = creature_traits(subject_seed(subject)).words().removeprefix("a ")
        for key, words, tuned in (("class word", "creature", model), ("traits", traits, model)):
            scores[key].append(subject_fidelity(generate(tuned, evaluation_scenes(subject, words), seed), references))
        for key, method, steps in (("textual inversion", "textual_inversion", ti_steps),
                                   ("dreambooth-lora", "dreambooth_lora", lora_steps)):
            concept, words = _train(model, subject, method, steps, seed)
            concepts[key][subject] = (concept, words)
            generated = generate(apply_concept(model, concept), evaluation_scenes(subject, words), seed)
            scores[key].append(subject_fidelity(generated, references))
        log.info("world check: subject %d: %s", subject, {k: round(v[-1], 3) for k, v in scores.items()})
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    def ratio_spread(top: str, bottom: str) -> float:  # the numerator's spread over subjects, as a ratio
        return _spread(scores[top]) / max(mean[bottom], 1e-6)

    gates = [
        Gate(f"TI-{ti_steps} / DreamBooth-LoRA subject fidelity ({mean['textual inversion']:.3f} / "
             f"{mean['dreambooth-lora']:.3f})", mean["textual inversion"] / max(mean["dreambooth-lora"], 1e-6),
             ratio_spread("textual inversion", "dreambooth-lora"), ">= 0.50",
             mean["textual inversion"] >= 0.5 * mean["dreambooth-lora"]),
        Gate(f"TI-{ti_steps} / class word alone ({mean['class word']:.3f})",
             mean["textual inversion"] / max(mean["class word"], 1e-6),
             ratio_spread("textual inversion", "class word"), ">= 4.00",
             mean["textual inversion"] >= 4 * mean["class word"]),
        Gate("sayable traits: subject fidelity between the class word's and DreamBooth-LoRA's", mean["traits"],
             _spread(scores["traits"]), f"in ({mean['class word']:.3f}, {mean['dreambooth-lora']:.3f})",
             mean["class word"] < mean["traits"] < mean["dreambooth-lora"]),
    ]
    return gates, concepts


def _named_pair_scenes(count: int, seed: int) -> list[Scene]:
    from ..core.world.vocabulary import PAIRED_POSITIONS, PATTERNS

    rng = np.random.default_rng([seed, 41])
    scenes = []
    while len(scenes) < count:
        a, b = (int(i) for i in rng.choice(len(CREATURE_NAMES), 2, replace=False))
        colours = [c for c in background_colours(NAMED_CREATURE_SEEDS[a]) if c in background_colours(
            NAMED_CREATURE_SEEDS[b])]
        places = PAIRED_POSITIONS[int(rng.integers(len(PAIRED_POSITIONS)))]
        objects = tuple(WorldObject(place, instance=NAMED_CREATURE_SEEDS[i], token=CREATURE_NAMES[i])
                        for place, i in zip(places, (a, b), strict=True))
        scenes.append(Scene(str(rng.choice(colours)), PATTERNS[int(rng.integers(2))], objects))
    return scenes


def _renders(seed: int, count: int = 8) -> np.ndarray:
    rng = np.random.default_rng([seed, 43])
    return np.stack([Scene(str(rng.choice(background_colours(seed))), "plain",
                           (WorldObject("centre", instance=seed),)).render(rng) for _ in range(count)])


def _train_together(model, first: int, second: int, steps: int, seed: int, as_names: bool = False,
                    composites: int = 0):
    """One DreamBooth-LoRA of two held-out subjects trained together (a joint run: the first's renders, then the
    second's, each captioned with its own trigger; `steps` per subject, as each has when trained apart) and the
    words naming each. `as_names`: each trigger starts at a creature name's vector (one of the list's last names,
    a named creature the world was trained on) and takes the name's place ("<s0> on the left"), as the world's
    named creatures are captioned. `composites`: that many Cut-Mix composites of the two (`cut_mix_renders`, cut
    from those renders) join the first's images, their captions naming both by their triggers."""
    from ..core.training import Companion, TrainConfig, subject_configs
    from ..core.world.subjects import cut_mix_renders, training_renders
    from .common import TRAINING_IMAGES

    def named(captions):
        return [c.replace("a {", "{") for c in captions] if as_names else captions

    (first_images, first_captions), (second_images, second_captions) = (training_renders(s, TRAINING_IMAGES)
                                                                        for s in (first, second))
    class_word = {s: CREATURE_NAMES[-1 - s] if as_names else "creature" for s in (first, second)}
    config = TrainConfig(trigger=f"<s{first}>", class_word=class_word[first], captions=named(first_captions),
                         steps=2 * steps, batch_size=4, seed=seed, token_init="class" if as_names else "auto",
                         companions=(Companion(f"<s{second}>", class_word[second], tuple(named(second_captions))),),
                         **SETTINGS["dreambooth_lora"])
    words = [subject_words("dreambooth_lora", c) for c in subject_configs(config)]
    if composites:
        mixed, scenes = cut_mix_renders({first: first_images, second: second_images}, composites)
        first_images = np.concatenate([first_images, mixed])
        config = replace(config, captions=config.captions + [c.replace("{first}", "{trigger}").replace(
            "{second}", words[1]) for c in named([s.caption() for s in scenes])])
    pixels = torch.from_numpy(np.concatenate([first_images, second_images])).float() / 255
    concept = train_method(model, pixels, config, "dreambooth_lora").concept
    return concept, dict(zip((first, second), words, strict=True))


def pair_gates(model, concepts: dict, count: int, seed: int, lora_steps: int) -> list[Gate]:
    """Named pairs drawn by the base model; two held-out subjects in one scene: one DreamBooth-LoRA of both
    trained together with Cut-Mix composites (the gate; the recipes' identifier), and for comparison the same
    without composites, with each trigger starting at a creature name, and two concepts trained apart and applied
    together (DreamBooth-LoRAs, textual inversions)."""
    from ..core.concepts import apply_concept
    from ..core.world.metrics import pair_fidelity
    from ..core.world.subjects import pair_scenes, subject_seed

    scenes = _named_pair_scenes(count, seed)
    images = generate(model, scenes, seed)
    references = {o.instance: _renders(o.instance) for s in scenes for o in s.objects}
    scored = [pair_fidelity(images[i:i + 1], scenes[i:i + 1], references) for i in range(count)]
    present, blended = ([s[key] for s in scored] for key in ("both_present", "homogenization"))
    gates = [Gate("pairs: two named creatures, both present at their places", float(np.mean(present)),
                  float(np.std(present) / np.sqrt(len(present))), ">= 0.80", float(np.mean(present)) >= 0.80),
             Gate("pairs: two named creatures, homogenization (the world's own, for comparison)",
                  float(np.mean(blended)), float(np.std(blended) / np.sqrt(len(blended))), "<= 0.25",
                  float(np.mean(blended)) <= 0.25)]
    subjects = sorted(concepts["dreambooth-lora"])
    pairs = list(zip(subjects[::2], subjects[1::2], strict=False))

    def homogenization(tuned, words: dict, a: int, b: int, as_names: bool = False) -> float:
        pair = pair_scenes((a, words[a]), (b, words[b]), count, named=as_names)
        return pair_fidelity(generate(tuned, pair, seed), pair,
                             {subject_seed(s): _renders(subject_seed(s)) for s in (a, b)})["homogenization"]

    rows = {}
    for as_names, composites, label in ((False, CUT_MIX_COMPOSITES, "trained together with cut-mix composites"),
                                        (False, 0, "trained together"),
                                        (True, 0, "trained together, triggers starting at creature names")):
        values = []
        for a, b in pairs:
            concept, words = _train_together(model, a, b, lora_steps, seed, as_names, composites)
            values.append(homogenization(apply_concept(model, concept), words, a, b, as_names))
        rows[f"a dreambooth-lora of two held-out subjects {label}"] = (values, composites > 0)
    for kind, learned in concepts.items():
        rows[f"two held-out subjects' {kind} concepts trained apart, applied together"] = ([homogenization(
            apply_concept(apply_concept(model, learned[a][0]), learned[b][0]), {a: learned[a][1], b: learned[b][1]},
            a, b) for a, b in pairs], False)
    for label, (values, required) in rows.items():
        if values:
            value = float(np.mean(values))
            gates.append(Gate(f"pairs: {label}, homogenization", value, _spread(values), "<= 0.25", value <= 0.25,
                              required))
    return gates


def domain_lora_gates(options, shots: int = 10, domains: tuple[str, ...] = DOMAIN_CANDIDATES) -> list[Gate]:
    """Each unseen domain learned by a 10-shot LoRA (the SGE bench's LoRA baseline): its hit rate."""
    gates = []
    for domain in domains:
        samples = sge_run_method("lora", shots, options.model, options.quick, options.seed, domain)["samples"]
        hits = np.array([read_domain(i) == domain for i in samples], float)
        gates.append(Gate(f"{domain}: a {shots}-shot LoRA draws it", float(hits.mean()),
                          float(hits.std() / np.sqrt(len(hits))), ">= 0.80", hits.mean() >= 0.80,
                          domain in FAIR_DOMAINS))
    return gates


def attribute_gates(options) -> list[Gate]:
    rows, *_ = base_suite(options)
    gates = []
    for split, bound in (("seen", 0.90), ("heldout", 0.80)):
        values = [r["accuracy"] for r in rows if r["split"] == split]
        gates.append(Gate(f"attributes, {split} (min over attributes)", min(values), float(np.std(values)),
                          f">= {bound:.2f}", min(values) >= bound))
    return gates


def world_check(options) -> tuple[list[Gate], bool]:
    model = load_model(options.model, device="auto")
    quick = options.quick
    gates = attribute_gates(options)
    gates += identity_gates(model, 20 if quick else 100)
    gates.append(text_path_gate(model, 3 if quick else 8, 1 if quick else 2, 2 if quick else 4))
    gates += domain_gates(model, 8 if quick else 40)
    learned, concepts = learning_gates(model, (0, 1) if quick else (0, 1, 2, 3), 200 if quick else TI_STEPS,
                                            60 if quick else LORA_STEPS, options.seed)
    gates += learned
    gates += pair_gates(model, concepts, 8 if quick else 24, options.seed, 60 if quick else LORA_STEPS)
    gates += domain_lora_gates(options)
    return gates, all_required_hold(gates)


def all_required_hold(gates: list[Gate]) -> bool:
    return all(g.holds for g in gates if g.required)


def _verdict(gate: Gate) -> str:
    if gate.required:
        return "yes" if gate.holds else "NO"
    return ("yes" if gate.holds else "no") + " (not required)"


def table(gates: list[Gate]) -> str:
    lines = ["| gate | value | spread | bound | holds |", "|---|---|---|---|---|"]
    lines += [f"| {g.name} | {g.value:.3f} | {g.spread:.3f} | {g.bound} | {_verdict(g)} |" for g in gates]
    return "\n".join(lines)
