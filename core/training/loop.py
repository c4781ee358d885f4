"""The one few-shot training loop: a few images + a trigger word -> a Concept.

It reads top to bottom as nanoGPT's loop does: prepare images and captions, add the trigger token,
choose what trains, then for each step draw a batch (a pure function of seed, step and process, so
a resumed run replays exactly), compute the denoising loss plus the pluggable loss terms, step the
optimizer, report progress, checkpoint. The base model is put back exactly as it was at the end,
on Cancel and on errors; the result is a Concept, applied with `apply_concept`.
Runs under `accelerate launch`: each process draws its own batches and gradients are averaged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler
from PIL import Image

from ..concepts.apply import class_word_vector, token_vectors, trigger_is_new, with_trigger_token
from ..concepts.concept import Concept
from ..errors import Cancelled, InputError
from ..model import Model
from ..sampling.conditioning import encode_text
from ..sampling.loop import unet_denoiser
from ..training_state import latest_checkpoint, load_training_state, prune_checkpoints, save_training_state
from .images import augment, prepare_images
from .losses import LossTerm
from .trainable import TRAINABLE_KINDS, build_trainable

log = logging.getLogger("conceptkit.training")

DEFAULT_TEMPLATES = ("a {trigger} {class}",)
MIXED_PRECISION = ("no", "fp16", "bf16")
ProgressFn = Callable[[int, int, Callable[[], Image.Image | None]], None]


@dataclass
class TrainConfig:
    trigger: str
    class_word: str
    captions: list[str] | None = None  # one per image; "{trigger}" / "{class}" are filled in
    templates: tuple[str, ...] = DEFAULT_TEMPLATES  # used when there are no captions
    trainable: str = "lora"  # embedding | lora | attention | full
    rank: int = 4
    lora_alpha: float | None = None  # None: = rank
    train_text_encoder: bool = False
    token_init: str = "class"  # "class": start from the class word's vector; "rare": a random vector of typical norm
    steps: int = 400
    learning_rate: float = 1e-3
    embedding_learning_rate: float = 5e-3
    batch_size: int = 4
    seed: int = 0
    augment_scale: float = 0.9
    flip: bool = False
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    checkpoint_every: int = 0  # 0: only when cancelled
    keep_checkpoints: int = 2
    method: str = "custom"
    parameters: dict = field(default_factory=dict)  # method-specific values recorded in the concept

    def signature(self) -> str:
        """What a checkpoint must agree on to be resumed (not the step count: a run may be extended)."""
        values = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("steps", "checkpoint_every",
                                                                                 "keep_checkpoints")}
        return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    concept: Concept
    losses: list[float]
    resumed_from: int


def step_generator(seed: int, step: int, rank: int, stream: int = 0) -> torch.Generator:
    """A generator that is a stable function of (seed, step, process, stream)."""
    state = np.random.SeedSequence([seed, step, rank, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _check_config(model: Model, config: TrainConfig) -> None:
    if config.trainable not in TRAINABLE_KINDS:
        raise InputError(f"trainable '{config.trainable}' is not one of {', '.join(TRAINABLE_KINDS)}.")
    if config.mixed_precision not in MIXED_PRECISION:
        raise InputError(f"mixed_precision '{config.mixed_precision}' is not one of {', '.join(MIXED_PRECISION)}.")
    if config.steps < 1 or config.batch_size < 1:
        raise InputError(f"steps and batch_size must be at least 1 (got {config.steps}, {config.batch_size}).")
    trigger = config.trigger.strip()
    if not trigger or any(c.isspace() for c in trigger):
        raise InputError(f"the trigger '{config.trigger}' must be one word without spaces, e.g. '<my-dog>'.")
    for tokenizer in model.tokenizers:
        if not trigger_is_new(tokenizer, trigger):
            raise InputError(f"the trigger '{trigger}' is already a word of this model's vocabulary, so training "
                             f"would change what that word means; choose a new word such as '<{trigger}>'.")
    if not config.class_word.strip():
        raise InputError("the class word is empty; give the kind of thing the subject is (e.g. 'dog').")
    if model.concepts:
        raise InputError("this model has concepts applied; train on the base model (the model before Apply "
                         "Concept) and apply the concepts together afterwards.")


def instance_captions(config: TrainConfig, count: int) -> list[str]:
    fill = {"trigger": config.trigger, "class": config.class_word}
    if config.captions:
        if len(config.captions) != count:
            raise InputError(f"{len(config.captions)} captions were given for {count} images; give one per image "
                             "or none.")
        captions = [c.replace("{trigger}", fill["trigger"]).replace("{class}", fill["class"]) for c in config.captions]
    else:
        captions = [config.templates[i % len(config.templates)].format(**fill) for i in range(count)]
    for i, caption in enumerate(captions):
        if config.trigger not in caption.split():
            raise InputError(f"caption {i + 1} ('{caption}') does not contain the trigger '{config.trigger}'.")
    return captions


def class_captions(captions: list[str], trigger: str) -> list[str]:
    """The instance captions without the trigger: what the class looks like to the base model."""
    return [" ".join(w for w in c.split() if w != trigger) for c in captions]


def _token_init(model: Model, config: TrainConfig) -> list[torch.Tensor]:
    vectors = []
    for i, encoder in enumerate(model.text_encoders):
        table = encoder.get_input_embeddings().weight.detach().float().cpu()
        if config.token_init == "class":  # _check_config has made sure there is a class word
            vectors.append(class_word_vector(model, i, config.class_word).cpu())
        else:  # a rare token: a random direction with the table's typical norm
            gen = torch.Generator().manual_seed(int(hashlib.sha256(f"{config.trigger}/{i}".encode()).hexdigest()[:8],
                                                    16))
            direction = torch.randn(table.shape[1], generator=gen)
            vectors.append(direction / direction.norm() * table.norm(dim=1).mean())
    return vectors


class TrainingRun:
    """One run's state, shared with the loss terms."""

    def __init__(self, model: Model, config: TrainConfig, accelerator: Accelerator):
        self.config, self.accelerator = config, accelerator
        self.model = dataclasses.replace(model, tokenizers=[with_trigger_token(t, config.trigger)
                                                            for t in model.tokenizers])
        self.noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
        self.trainable = None

    def denoising_loss(self, images: torch.Tensor, captions: list[str], generator: torch.Generator) -> torch.Tensor:
        """The diffusion loss on images [B, 3, H, W] in -1..1 with their captions."""
        model, scheduler = self.model, self.noise_scheduler
        with torch.no_grad():
            posterior = model.vae.encode(images.to(model.device, model.vae.dtype)).latent_dist
            noise_z = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean)
            latents = (posterior.mean + posterior.std * noise_z) * model.vae.config.scaling_factor
        latents = latents.to(model.dtype)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
        t = t.to(model.device)
        noisy = scheduler.add_noise(latents, noise, t)
        target = scheduler.get_velocity(latents, noise, t) if model.prediction_type == "v_prediction" else noise
        size = images.shape[-1]
        with self.accelerator.autocast():
            pred = unet_denoiser(model, size, size)(noisy, t, encode_text(model, captions))
        return F.mse_loss(pred.float(), target.float())

    def token_table(self) -> list[dict[int, torch.Tensor]]:
        return [{tok.convert_tokens_to_ids(self.config.trigger): vector}
                for tok, vector in zip(self.model.tokenizers, self.trainable.token, strict=True)]


def train_concept(
    model: Model,
    images,
    config: TrainConfig,
    loss_terms: list[LossTerm] = (),
    *,
    name: str = "concept",
    checkpoint_dir: Path | None = None,
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
    preview: Callable[[Model], Image.Image] | None = None,
    preview_every: int = 0,
) -> TrainResult:
    """Learn a concept. With `checkpoint_dir`, a run resumes from its newest checkpoint (same settings).
    `progress(step, total, preview)` is called every step; `preview()` renders `preview(model)` of the concept
    so far every `preview_every` steps (default: a tenth of the run) and gives None in between."""
    # ComfyUI runs nodes under torch.inference_mode(); training needs autograd, and weights created in
    # inference mode cannot take part in it, so they are replaced by ordinary copies (same values) first.
    with torch.inference_mode(False), torch.enable_grad():
        leave_inference_mode(model)
        return _train(model, images, config, list(loss_terms), name, checkpoint_dir, progress, cancel, preview,
                      preview_every)


def leave_inference_mode(model: Model) -> None:
    """Replace parameters and buffers created under torch.inference_mode() by ordinary tensors."""
    for part in [model.unet, model.vae, *model.text_encoders]:
        for module in part.modules():
            for key, param in list(module._parameters.items()):
                if param is not None and param.is_inference():
                    module._parameters[key] = torch.nn.Parameter(param.clone(), requires_grad=param.requires_grad)
            for key, buffer in list(module._buffers.items()):
                if buffer is not None and buffer.is_inference():
                    module._buffers[key] = buffer.clone()


def _train(model, images, config, loss_terms, name, checkpoint_dir, progress, cancel, preview,
           preview_every) -> TrainResult:
    preview_every = preview_every or max(1, config.steps // 10)
    _check_config(model, config)
    base_fingerprint = model.fingerprint()  # of the weights before a full fine-tune changes them in place
    pixels = prepare_images(images, model.default_size)
    captions = instance_captions(config, len(pixels))
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=model.device.type == "cpu")
    run = TrainingRun(model, config, accelerator)
    alpha = float(config.lora_alpha or config.rank)
    run.trainable = build_trainable(model, config.trainable, _token_init(model, config),
                                    train_token=config.trainable == "embedding" or config.train_text_encoder,
                                    train_text_encoder=config.train_text_encoder, rank=config.rank, alpha=alpha,
                                    seed=config.seed)
    trainable = run.trainable
    groups = [{"params": trainable.weight_parameters(), "lr": config.learning_rate},
              {"params": trainable.token_parameters(), "lr": config.embedding_learning_rate}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)
    state = _TensorState(trainable.state())
    step, losses, start = 0, [], 0
    if checkpoint_dir is not None and (last := latest_checkpoint(checkpoint_dir)) is not None:
        step, extra = load_training_state(last, {"trainable": state}, optimizer)
        if extra.get("signature") != config.signature():
            trainable.restore()
            raise InputError(f"the checkpoints in {checkpoint_dir} were made with other settings; choose another "
                             "checkpoint folder, or delete it to start over.")
        losses, start = list(extra.get("losses", [])), step
        log.info("%s: resumed at step %d of %d", name, step, config.steps)
    unet_mode, checkpointing = model.unet.training, model.unet.is_gradient_checkpointing
    if config.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    params = [p for g in groups for p in g["params"]]

    def save(at: int) -> None:
        if checkpoint_dir is not None and accelerator.is_main_process:
            save_training_state(Path(checkpoint_dir) / f"step_{at}", {"trainable": state}, optimizer, at,
                                extra={"signature": config.signature(), "losses": losses})
            prune_checkpoints(Path(checkpoint_dir), config.keep_checkpoints)

    try:
        with token_vectors(run.model, run.token_table()):
            model.unet.train(config.trainable != "embedding")
            try:  # on Cancel (ours, or ComfyUI's interrupt from cancel() or its progress bar) and on errors,
                # checkpoint the last finished step so that the run resumes there
                while step < config.steps:
                    if cancel is not None and cancel():
                        raise Cancelled(f"training was cancelled at step {step} of {config.steps}" + (
                            f"; run it again to resume from {checkpoint_dir}." if checkpoint_dir else "."))
                    gen = step_generator(config.seed, step, accelerator.process_index)
                    pick = torch.randint(0, len(pixels), (config.batch_size,), generator=gen)
                    batch = augment(pixels[pick], gen, config.augment_scale, config.flip)
                    loss = run.denoising_loss(batch, [captions[i] for i in pick], gen)
                    for term in loss_terms:
                        loss = loss + term(run, step, gen)
                    if not torch.isfinite(loss):
                        raise InputError(f"the loss became {loss.item()} at step {step}; lower the learning rate.")
                    optimizer.zero_grad(set_to_none=True)
                    accelerator.backward(loss)
                    if accelerator.num_processes > 1:
                        for p in params:
                            if p.grad is not None:
                                p.grad = accelerator.reduce(p.grad, reduction="mean")
                    optimizer.step()
                    step += 1
                    losses.append(float(loss.item()))
                    if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
                        save(step)
                    if progress is not None:
                        due = preview is not None and (step % preview_every == 0 or step == config.steps)
                        progress(step, config.steps, _preview_fn(run, preview if due else None))
            except BaseException:
                save(step)
                raise
        concept = Concept(name=name, method=config.method, family=model.family, base_fingerprint=base_fingerprint,
                          trigger=config.trigger, class_word=config.class_word,
                          tensors=trainable.concept_tensors(),
                          lora_rank=config.rank if config.trainable == "lora" else 0,
                          lora_alpha=alpha if config.trainable == "lora" else 0.0,
                          parameters={"steps": config.steps, "learning_rate": config.learning_rate,
                                      "trainable": config.trainable, "batch_size": config.batch_size,
                                      "seed": config.seed, "images": len(pixels), **config.parameters})
    finally:
        trainable.restore()
        model.unet.train(unet_mode)
        if config.gradient_checkpointing and not checkpointing:
            model.unet.disable_gradient_checkpointing()
    return TrainResult(concept, losses, start)


def _preview_fn(run: TrainingRun, preview: Callable[[Model], Image.Image] | None):
    """A lazy preview of the concept as it is now (rendered only if the progress display asks for it)."""
    if preview is None:
        return lambda: None

    def render():
        was_training = run.model.unet.training
        run.model.unet.eval()
        try:
            with torch.no_grad():
                return preview(run.model)
        finally:
            run.model.unet.train(was_training)

    return render


class _TensorState:
    """Named tensors as a module-like state for save/load_training_state (restored in place)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.tensors.items()}

    def load_state_dict(self, values: dict[str, torch.Tensor]) -> None:
        missing = set(self.tensors) - set(values)
        if missing:
            raise InputError(f"the checkpoint lacks {len(missing)} trained tensors; it belongs to another run.")
        with torch.no_grad():
            for k, v in self.tensors.items():
                v.copy_(values[k])


def loss_curve(losses: list[float], width: int = 512, height: int = 256) -> torch.Tensor:
    """The loss per step (and its running mean) as a ComfyUI IMAGE [1, H, W, 3]."""
    from PIL import ImageDraw

    canvas = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    if losses:
        values = np.asarray(losses, dtype=np.float64)
        smooth = np.convolve(values, np.ones(max(1, len(values) // 20)) / max(1, len(values) // 20), mode="valid")
        top, bottom = float(np.quantile(values, 0.98)), float(values.min())
        span = max(top - bottom, 1e-12)
        margin = 24

        def points(series):
            n = max(len(series) - 1, 1)
            return [(margin + (width - 2 * margin) * i / n,
                     height - margin - (height - 2 * margin) * (min(v, top) - bottom) / span) for i, v in
                    enumerate(series)]

        draw.line(points(values), fill=(90, 90, 140), width=1)
        draw.line(points(smooth), fill=(240, 200, 80), width=2)
        draw.text((margin, 4), f"loss  first {values[0]:.4f}  last {smooth[-1]:.4f}  steps {len(values)}",
                  fill=(230, 230, 230))
    array = np.asarray(canvas, dtype=np.float32) / 255.0
    return torch.from_numpy(array)[None]

