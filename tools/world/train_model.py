"""Train the embedded world model: VAE first, then UNet + text encoder on its latents.

    python tools/world/train_model.py --workdir DIR [--config C] [--minutes M] [--export DIR]

A build script of the world, outside the installed package. `configs/world_model.json` is the first edition
(from scratch, the first scene mix);
`configs/world_model_edition2.json` continues from a trained model's folder (its `init_from`: the first
edition's weights) with the second edition's scene mix, keeping that model's VAE and tokenizer;
`configs/world_model_edition3_identity.json` continues the third edition with identity vectors (a creature's own
point in the text encoder's input space, `identity_vectors.py`): named creatures' words tied to theirs, and scenes
of unnamed creatures captioned with a carrier word whose embedding is replaced by the creature's vector.

Runs in stages on the training service's engine: checkpoints every few hundred steps (safetensors),
resumes exactly from the newest checkpoint (each step's data, noise and timesteps are pure functions of
(seed, step)), and under `accelerate launch` each process draws its own batches and gradients are averaged.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from identity_vectors import IdentityBasis
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from conceptkit.benchmarks.world_check import typical_word_norm
from conceptkit.core.training import RunSettings, TrainingEngine
from conceptkit.core.training.checkpoints import latest_checkpoint, load_training_state
from conceptkit.core.world.scenes import MIXES, Scene, WorldObject, background_colours, training_batch
from conceptkit.core.world.vocabulary import (
    CAPTION_WORDS,
    CREATURE_NAMES,
    NAMED_CREATURE_SEEDS,
    PAIRED_POSITIONS,
    PATTERNS,
    POSITIONS,
    TRAIN_INSTANCE_SEEDS,
)

from clip_tokenizer import write_clip_tokenizer

log = logging.getLogger("conceptkit.world.train")
CONFIG_PATH = Path(__file__).parent / "configs" / "world_model.json"


VAE_STREAM, DIFFUSION_STREAM = 1, 2


def stream_generator(*parts: int) -> torch.Generator:
    """A generator seeded by a stable function of the parts (never Python's per-process hash())."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0]))


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup)))) * 0.9 + 0.1


def random_crops(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """One random size x size crop per image (the VAE is fully convolutional, so crops train it as well)."""
    offsets = torch.randint(0, x.shape[-1] - size + 1, (x.shape[0], 2), generator=gen)
    return torch.stack([img[:, oy:oy + size, ox:ox + size] for img, (oy, ox) in zip(x, offsets.tolist(), strict=True)])


class Deadline:
    """When this run should stop (after saving a checkpoint): a time limit and/or a step budget."""

    def __init__(self, minutes: float | None = None, steps: int | None = None):
        self.end = None if minutes is None else time.monotonic() + minutes * 60
        self.steps_left = steps

    def tick(self) -> None:
        if self.steps_left is not None:
            self.steps_left -= 1

    def passed(self) -> bool:
        out_of_time = self.end is not None and time.monotonic() > self.end
        return out_of_time or (self.steps_left is not None and self.steps_left <= 0)


def scene_mix(cfg: dict):
    return MIXES[cfg.get("mix", "first_edition")]


def init_folder(cfg: dict) -> Path | None:
    """The trained model (diffusers folder) a continued run starts from, if any."""
    if "init_from" not in cfg:
        return None
    folder = Path(cfg["init_from"])
    return folder if folder.is_absolute() else Path(__file__).parents[2] / folder


def train_vae(cfg: dict, workdir: Path, accelerator: Accelerator, deadline: Deadline) -> AutoencoderKL | None:
    """The VAE: trained from scratch, or a continued run's VAE, its decoder fine-tuned when the config asks."""
    final = workdir / "vae_final"
    if (final / "config.json").exists():
        return AutoencoderKL.from_pretrained(final)
    init = init_folder(cfg)
    vae = _vae_from_scratch(cfg, workdir, accelerator, deadline) if init is None else \
        _decoder_finetuned(cfg, AutoencoderKL.from_pretrained(init / "vae"), workdir, accelerator, deadline)
    if vae is not None and accelerator.is_main_process:
        vae.save_pretrained(final)
    return vae


def vae_batch(cfg: dict, c: dict, step: int, accelerator: Accelerator) -> tuple[torch.Tensor, torch.Generator]:
    """The scenes of a VAE stage's step (a pure function of seed, step and process) in -1..1, and the step's
    generator for what the stage draws next."""
    images, _ = training_batch(cfg["seed"] + 1000 * accelerator.process_index + 1, step, c["batch_size"],
                               scene_mix(cfg))
    return images_to_tensor(images), stream_generator(cfg["seed"], VAE_STREAM, step, accelerator.process_index)


def _vae_from_scratch(cfg: dict, workdir: Path, accelerator: Accelerator, deadline: Deadline) -> AutoencoderKL | None:
    c = cfg["vae"]
    torch.manual_seed(cfg["seed"])
    vae = AutoencoderKL(**c["model"])
    optimizer = torch.optim.AdamW(vae.parameters(), lr=c["lr"], weight_decay=0.0)
    engine = _engine(cfg, c["steps"], workdir / "vae", "vae", accelerator, deadline)
    vae, optimizer = engine.prepare(vae, optimizer)
    plain = accelerator.unwrap_model(vae)

    def loss_at(step: int) -> torch.Tensor:
        images, gen = vae_batch(cfg, c, step, accelerator)
        x = random_crops(images, c["crop"], gen).to(accelerator.device)
        posterior = plain.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(x.device)
        recon = plain.decode(z).sample
        return F.l1_loss(recon, x) + F.mse_loss(recon, x) + c["kl_weight"] * posterior.kl().mean()

    outcome = engine.run(loss_at, optimizer, {"vae": plain}, before_step=_lr_schedule(optimizer, c),
                         after_step=_log_every(50, "vae"))
    if not outcome.finished:
        return None
    vae = accelerator.unwrap_model(vae)
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, cfg["seed"]))
    return vae


def _decoder_finetuned(cfg: dict, vae: AutoencoderKL, workdir: Path, accelerator: Accelerator, deadline: Deadline
                       ) -> AutoencoderKL | None:
    """A continued run's VAE with its decoder trained on whole 64x64 scenes of the run's mix (`vae_decoder` in the
    config; none: kept as it is). The encoder stays frozen, so latents, and the UNet that models them, are
    unchanged; the decoder learns what crops never showed it, the image's outer rows (without this, a plain blue
    background decoded to (56, 89, 196) inside and (1, 40, 248) on the outer row)."""
    c = cfg.get("vae_decoder")
    if c is None:
        return vae
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    params = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=c["lr"], weight_decay=0.0)
    engine = _engine(cfg, c["steps"], workdir / "vae_decoder", "vae decoder", accelerator, deadline)
    vae, optimizer = engine.prepare(vae, optimizer)
    plain = accelerator.unwrap_model(vae)

    def loss_at(step: int) -> torch.Tensor:
        images, gen = vae_batch(cfg, c, step, accelerator)
        x = images.to(accelerator.device)
        with torch.no_grad():
            posterior = plain.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(x.device)
        recon = plain.decode(z).sample
        return F.l1_loss(recon, x) + F.mse_loss(recon, x)

    outcome = engine.run(loss_at, optimizer, {"vae_decoder": plain.decoder, "post_quant_conv": plain.post_quant_conv},
                         params=params, before_step=_lr_schedule(optimizer, c),
                         after_step=_log_every(50, "vae decoder"))
    return accelerator.unwrap_model(vae).requires_grad_(False) if outcome.finished else None


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, seed: int, n: int = 512) -> float:
    """1 / std of the latents, as Stable Diffusion's 0.18215 was chosen (on the first edition's scenes)."""
    images, _ = training_batch(seed + 999_999, 0, n, MIXES["first_edition"])
    z = vae.encode(images_to_tensor(images)).latent_dist.mean
    return float(1.0 / z.std())


@torch.no_grad()
def encoded_parts(parts: Path, count: int, encode_part, deadline: Deadline, label: str
                  ) -> tuple[dict[str, torch.Tensor], list[str]] | None:
    """`count` parts encoded once each into `parts` (resumable: a part on disk is kept), then joined: the
    concatenated tensors and captions. `encode_part(i)` -> (tensors, captions). None when the deadline passed."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    parts.mkdir(exist_ok=True)
    for i in range(count):
        part = parts / f"{i:05d}.safetensors"
        if part.exists():
            continue
        if deadline.passed():
            return None
        with torch.no_grad():
            tensors, captions = encode_part(i)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(part),
                  metadata={"captions": json.dumps(captions)})
        if i % 20 == 0:
            log.info("%s: encoded part %d/%d", label, i + 1, count)
    joined: dict[str, list[torch.Tensor]] = {}
    captions = []
    for i in range(count):
        part = parts / f"{i:05d}.safetensors"
        for key, value in load_file(str(part)).items():
            joined.setdefault(key, []).append(value)
        with safe_open(str(part), "pt") as f:
            captions += json.loads(f.metadata()["captions"])
    return {k: torch.cat(v) for k, v in joined.items()}, captions


def _posterior(vae: AutoencoderKL, images: np.ndarray) -> dict[str, torch.Tensor]:
    posterior = vae.encode(images_to_tensor(images)).latent_dist
    return {"mean": posterior.mean.half(), "std": posterior.std.half()}


def encode_dataset(cfg: dict, workdir: Path, vae: AutoencoderKL, deadline: Deadline) -> dict | None:
    """Encode the fixed training set once: posterior mean and std of every image, and its caption."""
    from safetensors.torch import load_file, save_file

    path = workdir / "latents.safetensors"
    if not path.exists():
        c = cfg["dataset"]
        vae.eval()

        def encode_part(i: int):
            images, captions = training_batch(cfg["seed"] + 7, i, c["encode_batch"], scene_mix(cfg))
            return _posterior(vae, images), captions

        joined = encoded_parts(workdir / "latents_parts", c["size"] // c["encode_batch"], encode_part, deadline,
                               "training scenes")
        if joined is None:
            return None
        save_file(joined[0], str(path))
        (workdir / "captions.json").write_text(json.dumps(joined[1]))
    data = load_file(str(path))
    data["captions"] = json.loads((workdir / "captions.json").read_text())
    return data


def batch_index(n: int, seed: int, step: int, batch_size: int, rank: int) -> torch.Tensor:
    """Indices of one step: epoch-wise permutations, a pure function of (seed, step, rank)."""
    first = (step * batch_size) % n
    epoch = (step * batch_size) // n
    order = torch.randperm(n, generator=stream_generator(seed, 3, epoch, rank))
    return order[torch.arange(first, first + batch_size) % n]


def identity_scene_index(config: dict, seeds: torch.Tensor, seed: int, step: int, count: int, rank: int,
                         atypical: torch.Tensor | None = None) -> torch.Tensor:
    """The identity scenes of a step (their creatures' `seeds`, [N, 2], -1: none), a pure function of (seed, step,
    rank): uniform over them, or with `pair_share` in the config, that share from the scenes with two creatures, or
    with `atypical_share`, that share from the scenes `atypical` marks (ATYPICAL_QUANTILE); not both."""
    if config.get("atypical_share") is not None and config.get("pair_share") is not None:
        raise ValueError("identity_vectors: set atypical_share or pair_share, not both (one share decides a batch)")
    if config.get("atypical_share") is not None:
        from_atypical = round(count * config["atypical_share"])
        rare, rest = torch.nonzero(atypical).flatten(), torch.arange(len(seeds))
        return torch.cat([rare[batch_index(len(rare), seed + 3, step, from_atypical, rank)],
                          rest[batch_index(len(rest), seed + 1, step, count - from_atypical, rank)]])
    share = config.get("pair_share")
    if share is None:
        return batch_index(len(seeds), seed + 1, step, count, rank)
    paired = seeds[:, 1] >= 0
    pairs, singles = torch.nonzero(paired).flatten(), torch.nonzero(~paired).flatten()
    from_pairs = round(count * share)
    return torch.cat([pairs[batch_index(len(pairs), seed + 2, step, from_pairs, rank)],
                      singles[batch_index(len(singles), seed + 1, step, count - from_pairs, rank)]])


def dataset_batch(data: dict, seed: int, step: int, batch_size: int, rank: int) -> tuple[torch.Tensor, ...]:
    index = batch_index(data["mean"].shape[0], seed, step, batch_size, rank)
    return data["mean"][index].float(), data["std"][index].float(), [data["captions"][i] for i in index.tolist()]


ATYPICAL_QUANTILE = 0.8  # `atypical_share`: a creature is atypical when its vector's norm is above this quantile
CARRIERS = CREATURE_NAMES[:2]  # the words whose input embedding an identity scene replaces by its creatures' vectors


def identity_scenes(seed: int, part: int, count: int, pairs: float) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Scenes of unnamed training creatures, each captioned by a carrier word (the first creature by CARRIERS[0],
    a second one by CARRIERS[1]): images, captions, and the creatures' seeds ([count, 2], -1: none)."""
    rng = np.random.default_rng([seed, 11, part])
    images, captions, seeds = [], [], np.full((count, 2), -1, np.int64)
    for i in range(count):
        n = 2 if rng.random() < pairs else 1
        chosen = [int(s) for s in rng.choice(np.arange(TRAIN_INSTANCE_SEEDS.start, TRAIN_INSTANCE_SEEDS.stop), n,
                                             replace=False)]
        colours = sorted(set(background_colours(chosen[0])).intersection(*[background_colours(s) for s in chosen]))
        places = PAIRED_POSITIONS[int(rng.integers(len(PAIRED_POSITIONS)))] if n == 2 else \
            (list(POSITIONS)[int(rng.integers(len(POSITIONS)))],)
        scene = Scene(colours[int(rng.integers(len(colours)))], PATTERNS[int(rng.integers(len(PATTERNS)))],
                      tuple(WorldObject(place, instance=s, token=CARRIERS[k])
                            for k, (place, s) in enumerate(zip(places, chosen, strict=True))))
        images.append(scene.render(rng))
        captions.append(scene.caption())
        seeds[i, :n] = chosen
    return np.stack(images), captions, seeds


def encode_identity_dataset(cfg: dict, workdir: Path, vae: AutoencoderKL, deadline: Deadline) -> dict | None:
    """The identity scenes (`identity_vectors` in the config), encoded once like the main dataset."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    c = cfg["identity_vectors"]
    path = workdir / "identity_latents.safetensors"
    if not path.exists():
        def encode_part(i: int):
            images, captions, seeds = identity_scenes(cfg["seed"] + 8, i, c["encode_batch"], c["pairs"])
            return {**_posterior(vae, images), "seeds": torch.from_numpy(seeds)}, captions

        joined = encoded_parts(workdir / "identity_parts", c["size"] // c["encode_batch"], encode_part, deadline,
                               "identity scenes")
        if joined is None:
            return None
        save_file(joined[0], str(path), metadata={"captions": json.dumps(joined[1])})
    data = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        data["captions"] = json.loads(f.metadata()["captions"])
    return data


def build_text_encoder(cfg: dict, vocab_size: int) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, bos_token_id=vocab_size - 2,
                                        eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
                                        **cfg["text_encoder"]))


def _run_tokenizer(cfg: dict, workdir: Path, init: Path | None) -> CLIPTokenizer:
    """The run's tokenizer, written once into its folder and kept: a continued run's own (or, with
    `grow_vocabulary`, one of today's words, which gives every earlier word its id), else today's words."""
    folder = workdir / "tokenizer"
    if not (folder / "vocab.json").exists():
        if init is not None and not cfg.get("grow_vocabulary", False):
            shutil.copytree(init / "tokenizer", folder)
        else:
            write_clip_tokenizer(CAPTION_WORDS, folder, max_length=cfg["text_encoder"]["max_position_embeddings"])
    return CLIPTokenizer.from_pretrained(folder)


@torch.no_grad()
def grown_text_encoder(old: CLIPTextModel, old_tokenizer: CLIPTokenizer, new: CLIPTextModel,
                       new_tokenizer: CLIPTokenizer, seed: int) -> None:
    """Load `old`'s weights into `new`, whose vocabulary holds every token of `old`'s and more: each old token's
    embedding moves to its id in the new vocabulary; a new token starts at the old embeddings' mean plus noise of
    their spread (seeded), so new words start apart and at a word's typical norm."""
    state = old.state_dict()
    key = next(k for k in state if k.endswith("token_embedding.weight"))
    old_rows = state.pop(key)
    rows = new.get_input_embeddings().weight
    gen = stream_generator(seed, 4)
    rows.copy_(old_rows.mean(0) + old_rows.std(0) * torch.randn(rows.shape, generator=gen))
    old_vocab = old_tokenizer.get_vocab()
    for token, new_id in new_tokenizer.get_vocab().items():
        if token in old_vocab:
            rows[new_id] = old_rows[old_vocab[token]]
    missing, unexpected = new.load_state_dict(state, strict=False)
    if missing != [key] or unexpected:
        raise ValueError(f"the text encoders differ beyond their vocabularies: {missing}, {unexpected}")


class EMA:
    """Exponential moving average of a module's weights (the weights that ship)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module, self.decay = copy.deepcopy(module).requires_grad_(False), decay

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.module.parameters(), module.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1 - decay)


def train_diffusion(cfg: dict, workdir: Path, vae: AutoencoderKL, data: dict, accelerator: Accelerator,
                    deadline: Deadline, identity: dict | None = None) -> bool:
    """Returns True when the configured number of steps is done. With `identity` (the identity scenes), that
    fraction of each batch comes from them, their carrier words' embeddings replaced by the creatures' identity
    vectors, and every name's embedding is tied to its creature's vector."""
    c = cfg["diffusion"]
    init = init_folder(cfg)
    tokenizer = _run_tokenizer(cfg, workdir, init)
    torch.manual_seed(cfg["seed"] + 1)
    unet = UNet2DConditionModel(**cfg["unet"])
    text_encoder = build_text_encoder(cfg, len(tokenizer))
    if init is not None:  # the shipped (EMA) weights are where a continued run starts
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(init / "unet").state_dict())
        grown_text_encoder(CLIPTextModel.from_pretrained(init / "text_encoder"),
                           CLIPTokenizer.from_pretrained(init / "tokenizer"), text_encoder, tokenizer, cfg["seed"])
    vectors = IdentityVectors(cfg, tokenizer, text_encoder) if identity is not None else None
    atypical = vectors.atypical(identity["seeds"]) if vectors and vectors.config.get("atypical_share") is not None \
        else None
    ema_unet, ema_text = EMA(unet, c["ema_decay"]), EMA(text_encoder, c["ema_decay"])
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=c["lr"], weight_decay=1e-2)
    noise_scheduler = DDPMScheduler(**cfg["noise_schedule"])
    alphas = noise_scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    vae.requires_grad_(False).eval()
    engine = _engine(cfg, c["steps"], workdir / "diffusion", "diffusion", accelerator, deadline, c["grad_clip"])
    unet, text_encoder, optimizer = engine.prepare(unet, text_encoder, optimizer)
    modules = {"unet": accelerator.unwrap_model(unet), "text_encoder": accelerator.unwrap_model(text_encoder),
               "ema_unet": ema_unet.module, "ema_text": ema_text.module}

    def loss_at(step: int) -> torch.Tensor:
        rank = accelerator.process_index
        own = c["batch_size"] - (vectors.batch_share(c["batch_size"]) if vectors else 0)
        mean, std, captions = dataset_batch(data, cfg["seed"], step, own, rank)
        if vectors:
            index = identity_scene_index(cfg["identity_vectors"], identity["seeds"], cfg["seed"], step,
                                         c["batch_size"] - own, rank, atypical)
            mean = torch.cat([mean, identity["mean"][index].float()])
            std = torch.cat([std, identity["std"][index].float()])
            captions = captions + [identity["captions"][i] for i in index.tolist()]
            seeds = torch.cat([torch.full((own, 2), -1, dtype=torch.int64), identity["seeds"][index]])
        gen = stream_generator(cfg["seed"], DIFFUSION_STREAM, step, rank)
        captions = ["" if torch.rand((), generator=gen) < c["caption_dropout"] else t for t in captions]
        latents = (mean + std * torch.randn(mean.shape, generator=gen)) * vae.config.scaling_factor
        b = latents.shape[0]
        noise = torch.randn(latents.shape, generator=gen)
        noise = noise + c["offset_noise"] * torch.randn((b, latents.shape[1], 1, 1), generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=gen)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(accelerator.device)
        if vectors:
            with vectors.replacing(ids.cpu(), seeds):
                hidden = text_encoder(ids)[0]
        else:
            hidden = text_encoder(ids)[0]
        pred = unet(noisy.to(accelerator.device), t.to(accelerator.device), encoder_hidden_states=hidden).sample
        weight = (torch.clamp(snr[t], max=c["min_snr_gamma"]) / snr[t]).to(accelerator.device)
        return (weight * F.mse_loss(pred, noise.to(accelerator.device), reduction="none").mean(dim=(1, 2, 3))).mean()

    log_line = _log_every(50, "diffusion")

    def after_step(step: int, loss: float) -> None:
        if vectors:
            vectors.tie_names(modules["text_encoder"])
        ema_unet.update(modules["unet"], step - 1)
        ema_text.update(modules["text_encoder"], step - 1)
        log_line(step, loss)

    outcome = engine.run(loss_at, optimizer, modules, params=params, before_step=_lr_schedule(optimizer, c),
                         after_step=after_step)
    return outcome.finished


class IdentityVectors:
    """The identity vectors of a run (tools/world/identity_vectors.py): the basis, the vectors' norm (a fraction
    of a typical caption word's at the start), the carriers' ids, and the named creatures' tied rows."""

    def __init__(self, cfg: dict, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel):
        self.config = cfg["identity_vectors"]
        self.basis = IdentityBasis(whitening=self.config.get("whitening", 1.0))
        table = text_encoder.get_input_embeddings().weight
        self.norm = self.config["norm_scale"] * typical_word_norm(tokenizer, table)
        self.carriers = [tokenizer.convert_tokens_to_ids(w + "</w>") for w in CARRIERS]
        self.name_ids = torch.tensor([tokenizer.convert_tokens_to_ids(w + "</w>") for w in CREATURE_NAMES])
        self.name_rows = self.basis.vectors(NAMED_CREATURE_SEEDS, self.norm)
        self._cache: dict[int, torch.Tensor] = {}
        self._override: tuple[torch.Tensor, torch.Tensor] | None = None
        text_encoder.get_input_embeddings().register_forward_hook(self._replace)
        self.tie_names(text_encoder)
        log.info("identity vectors: norm %.3f, %d named creatures tied", self.norm, len(self.name_ids))

    def atypical(self, seeds: torch.Tensor) -> torch.Tensor:
        """[N] bool: the scenes with a creature whose vector's norm is above the ATYPICAL_QUANTILE of all of
        theirs (the creatures least like the pool, whose vectors the model draws worst: docs/world.md)."""
        norms = torch.full(seeds.shape, -1.0)
        present = seeds >= 0
        norms[present] = self.basis.vectors(seeds[present].tolist(), 1.0).norm(dim=1)
        highest = norms.max(dim=1).values
        marked = highest > torch.quantile(norms[present], ATYPICAL_QUANTILE)
        log.info("identity vectors: %d of %d scenes have an atypical creature", int(marked.sum()), len(seeds))
        return marked

    def batch_share(self, batch_size: int) -> int:
        return round(batch_size * self.config["batch_fraction"])

    @torch.no_grad()
    def tie_names(self, text_encoder: CLIPTextModel) -> None:
        text_encoder.get_input_embeddings().weight[self.name_ids] = self.name_rows

    def _vector(self, seed: int) -> torch.Tensor:
        if seed not in self._cache:
            self._cache[seed] = self.basis.vectors([seed], self.norm)[0]
        return self._cache[seed]

    def _replace(self, module, inputs, output):
        if self._override is None:
            return output
        mask, values = self._override
        output = output.clone()
        output[mask.to(output.device)] = values.to(output.device, output.dtype)
        return output

    def replacing(self, ids: torch.Tensor, seeds: torch.Tensor):
        """A context in which the text encoder sees, at each carrier word of a row with creature seeds, that
        creature's vector."""
        import contextlib

        mask = torch.zeros(ids.shape, dtype=torch.bool)
        values = []
        for row in range(ids.shape[0]):
            for k, carrier in enumerate(self.carriers):
                if seeds[row, k] < 0:
                    continue
                where = (ids[row] == carrier).nonzero().flatten()
                if len(where):
                    mask[row, where[0]] = True
                    values.append((row, int(where[0]), self._vector(int(seeds[row, k]))))
        values.sort(key=lambda v: (v[0], v[1]))  # boolean indexing takes rows in this order

        @contextlib.contextmanager
        def context():
            self._override = (mask, torch.stack([v[2] for v in values])) if values else None
            try:
                yield
            finally:
                self._override = None

        return context()


def _engine(cfg: dict, steps: int, folder: Path, name: str, accelerator: Accelerator, deadline: Deadline,
            grad_clip: float | None = None) -> TrainingEngine:
    settings = RunSettings(steps, folder, cfg["checkpoint_every"], cfg["keep_checkpoints"], checkpoint_at_end=True,
                           grad_clip=grad_clip, name=f"world {name}")

    def stop() -> bool:
        deadline.tick()
        return deadline.passed()

    return TrainingEngine(settings, accelerator, stop=stop)


def _lr_schedule(optimizer, c: dict):
    def before_step(step: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = c["lr"] * lr_factor(step, c["warmup"], c["steps"])

    return before_step


def _log_every(n: int, stage: str):
    window = {"t0": time.monotonic(), "losses": []}

    def after_step(step: int, loss: float) -> None:
        window["losses"].append(loss)
        if step % n == 0:
            log.info("%s step %d loss %.4f (%.2fs/step)", stage, step, np.mean(window["losses"]),
                     (time.monotonic() - window["t0"]) / n)
            window["t0"], window["losses"] = time.monotonic(), []

    return after_step


def export_model(cfg: dict, workdir: Path, out: Path, checkpoint: Path | None = None) -> Path:
    """Write the EMA weights of a diffusion checkpoint as a diffusers folder (the embedded model)."""
    checkpoint = checkpoint or latest_checkpoint(workdir / "diffusion")
    if checkpoint is None:
        raise FileNotFoundError(f"no diffusion checkpoint under {workdir}")
    shutil.copytree(workdir / "tokenizer", out / "tokenizer", dirs_exist_ok=True)  # the one it was trained with
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    unet, text_encoder = UNet2DConditionModel(**cfg["unet"]), build_text_encoder(cfg, len(tokenizer))
    step, _ = load_training_state(checkpoint, {"ema_unet": unet, "ema_text": text_encoder}, None)
    unet.save_pretrained(out / "unet")
    text_encoder.save_pretrained(out / "text_encoder")
    AutoencoderKL.from_pretrained(workdir / "vae_final").save_pretrained(out / "vae")
    scheduler = DDIMScheduler(**cfg["noise_schedule"], clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    scheduler.save_pretrained(out / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "safety_checker": [None, None],
             "feature_extractor": [None, None], "requires_safety_checker": False}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    record = {"family": "world", "trained_steps": step, "mix": cfg.get("mix", "first_edition")}
    if (init := init_folder(cfg)) is not None:
        before = json.loads((init / "conceptkit.json").read_text())
        record = {**record, "trained_steps": before["trained_steps"] + step, "edition": cfg["edition"],
                  "stages": before.get("stages", [{"mix": before.get("mix", "first_edition"),
                                                   "steps": before["trained_steps"]}]) + [
                      {"mix": record["mix"], "steps": step, "continued_from": cfg["init_from_description"],
                       **({"vae_decoder_steps": cfg["vae_decoder"]["steps"]} if "vae_decoder" in cfg else {}),
                       **({"identity_vectors": cfg["identity_vectors"]} if "identity_vectors" in cfg else {})}]}
    (out / "conceptkit.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="checkpoints and logs (kept across sessions)")
    parser.add_argument("--config", type=Path, default=CONFIG_PATH)
    parser.add_argument("--minutes", type=float, default=None, help="stop (after a checkpoint) after this long")
    parser.add_argument("--stop-after", type=int, default=None, help="stop (after a checkpoint) after N steps")
    parser.add_argument("--export", type=Path, default=None, help="export the newest checkpoint to this folder")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(args.workdir / "train.log")])
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = json.loads(args.config.read_text())
    if args.export:
        export_model(cfg, args.workdir, args.export)
        log.info("exported to %s", args.export)
        return 0
    accelerator = Accelerator()
    deadline = Deadline(args.minutes, args.stop_after)
    vae = train_vae(cfg, args.workdir, accelerator, deadline)
    if vae is None:
        return 0
    data = encode_dataset(cfg, args.workdir, vae, deadline)
    if data is None:
        return 0
    identity = None
    if "identity_vectors" in cfg:
        identity = encode_identity_dataset(cfg, args.workdir, vae, deadline)
        if identity is None:
            return 0
    train_diffusion(cfg, args.workdir, vae, data, accelerator, deadline, identity)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
