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
Still to come (the third edition's remaining gates): TI-1000 against DreamBooth-LoRA, sayable attributes,
pairs, the 10-shot LoRA per domain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..core.model import load_model
from ..core.sampling import CFG, sample
from ..core.world.checkers import read_domain
from ..core.world.metrics import as_uint8, identity_features
from ..core.world.scenes import Scene, WorldObject, background_colours, style_renders
from ..core.world.vocabulary import CAPTION_WORDS, CREATURE_NAMES, HELDOUT_INSTANCE_SEEDS, NAMED_CREATURE_SEEDS
from .base import base_suite

log = logging.getLogger("conceptkit.world_check")
FAIR_DOMAINS = ("big_checks", "snowline")
STEPS, GUIDANCE = 25, 5.0


@dataclass
class Gate:
    name: str
    value: float
    spread: float  # standard deviation over seeds and subjects (0 where one figure is all there is)
    bound: str  # e.g. ">= 0.95"
    holds: bool


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


def text_path_gate(model, names: int, directions: int, seeds: int) -> Gate:
    """Identity cosine between a named creature drawn as trained and with its embedding moved by 0.3 of a typical
    word's norm in a random direction, same prompt and seed."""
    tokenizer, encoder = model.tokenizers[0], model.text_encoders[0]
    table = encoder.get_input_embeddings().weight
    word_ids = [tokenizer.convert_tokens_to_ids(w + "</w>") for w in CAPTION_WORDS]
    typical = float(table[word_ids].detach().norm(dim=1).mean())
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


def domain_gates(model, count: int) -> list[Gate]:
    """Img2img of a domain's targets from the guidance window's low end and top (the SGE Inverter's window on
    STEPS steps), without guidance (empty prompt, CFG 1, as SGE Sample draws), against the base model's rate."""
    from diffusers import DDIMScheduler

    from ..core.methods.sge_inverter import map_window

    scheduler = DDIMScheduler.from_config(model.scheduler_config)
    scheduler.set_timesteps(STEPS)
    window = map_window(scheduler.timesteps.cpu(), scheduler.alphas_cumprod, "noise")
    unprompted = as_uint8(sample(model, [""] * count, seed=100, steps=STEPS, guidance=CFG(1.0)).images)
    gates = []
    for domain in FAIR_DOMAINS:
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
        gates.append(Gate(f"{domain}: kept from the window's low end", *rates["low end"], ">= 0.90",
                          rates["low end"][0] >= 0.90))
        gates.append(Gate(f"{domain}: kept from the window's top, no guidance (base draws it {base_rate:.2f})",
                          *rates["top"], f"<= {base_rate + 0.05:.2f}", rates["top"][0] <= base_rate + 0.05))
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
    return gates, all(g.holds for g in gates)


def table(gates: list[Gate]) -> str:
    lines = ["| gate | value | spread | bound | holds |", "|---|---|---|---|---|"]
    lines += [f"| {g.name} | {g.value:.3f} | {g.spread:.3f} | {g.bound} | {'yes' if g.holds else 'NO'} |"
              for g in gates]
    return "\n".join(lines)
