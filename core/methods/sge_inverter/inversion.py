"""Inverting a few target images into an SGE set (METHODS.md §2; official code YuCao16/CRDI, its main.sh).

For each segment k of the guidance window, noisiest first, `epochs` Adam steps on G[:, k] with all N targets
as one batch. As the official code: each epoch takes about 0.8 x the segment's steps (one in each equal
sub-range); x_t = q(x0, t, n1) and y = q(x0, t_prev, n2) with fresh noises n1, n2 at every step (main.sh's
`--random_q_noise True`; `q_noise="fixed"`: one seed-0 noise for both, the configs' default), t_prev the
schedule's next DDIM step; one guided DDIM step from x_t gives x0_hat and x_{t_prev}; the loss, summed over those
steps before the epoch's one optimizer step, is
    mse(x0_hat, x0) + mse(x_{t_prev}, y) + lambda * mean over elements of (G[i, k] - mean_j G[j, k])^2.
G is one tensor [N, K, C, h, w] under one Adam for the whole inversion, as the official `GradientConfig`: a
finished segment gets zero gradients and moves only by its optimizer momentum while the next ones train.
A segment ends after `epochs` epochs, or sooner once its loss has settled (`settle`: the mean epoch loss of the
last SETTLE_WINDOW epochs is not below the mean of the window before by that fraction; 0 runs every epoch, as the
official code): which segment an epoch trains is a function of the losses so far, kept with G in the checkpoints,
so a resumed inversion ends as an uninterrupted one.
G enters after the UNet call, so the UNet runs forward only and never changes: an epoch's steps go through it as
one batch, and with fixed noise its prediction at each step's x_t is computed once and reused. A training run:
resume, Cancel, progress with a preview (the current x0_hat of the first target: a VAE decode, no UNet pass).
A v-prediction model's output is converted to eps first, and back after guidance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...errors import InputError
from ...model import Conditioning, Model, encode_negative, encode_prompts, unet_denoiser
from ...sampling import CFG, preview_image
from ...training import (
    Batch,
    RunHooks,
    RunSettings,
    StepSettings,
    TrainableSet,
    TrainingRun,
    prepare_images,
    settings_signature,
    training_mode,
)
from .sge import SGESet
from .window import MAPPINGS, Window, map_window

log = logging.getLogger("conceptkit.sge_inverter")

MAX_IMAGES = 10
DEFAULT_SCALE = 2.0  # s, the official value
DEFAULT_EPOCHS = 120  # per segment, the official value
DEFAULT_LR = 0.05
DEFAULT_PENALTY = 1.0
DEFAULT_STEPS = 25
DEFAULT_MAPPING = "noise"  # chosen by `conceptkit bench sge` (README)
DEFAULT_SETTLE = 0.01
SETTLE_WINDOW = 10  # epochs
Q_NOISES = ("random", "fixed")


@dataclass
class InvertSettings:
    steps: int = DEFAULT_STEPS
    mapping: str = DEFAULT_MAPPING  # how the official window is carried to this schedule (window.py)
    window: tuple[int, int] | None = None  # explicit [start, end) from the clean end; None: the mapped official one
    scale: float = DEFAULT_SCALE
    epochs: int = DEFAULT_EPOCHS
    learning_rate: float = DEFAULT_LR
    penalty: float = DEFAULT_PENALTY
    prompt: str = ""
    cfg: float = 1.0
    q_noise: str = "random"  # the official main.sh's; "fixed": one seed-0 noise for every epoch (Q_NOISES)
    settle: float = DEFAULT_SETTLE  # a segment ends once its loss improves less than this (0: every epoch)
    seed: int = 0
    checkpoint_every: int = 300

    def signature(self) -> str:
        return settings_signature(self)


def fixed_q_noise(shape) -> torch.Tensor:
    """The one noise x_t, y and the generation start are made with (official `random_q_noise: False`): target i's
    is row i of a seed-0 draw for the whole set, so inversion and generation agree on it."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def eps_of(output: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The model output as a noise prediction (v-prediction: eps = sqrt(1 - abar) x + sqrt(abar) v)."""
    if prediction_type == "v_prediction":
        return (1 - alpha_bar).sqrt() * x + alpha_bar.sqrt() * output
    return output


def output_of(eps: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """A noise prediction in the model's own prediction type (v = sqrt(abar) eps - sqrt(1 - abar) x0)."""
    if prediction_type == "v_prediction":
        x0 = (x - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
        return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0
    return eps


def prediction(denoise, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, uncond: Conditioning,
               cfg: float) -> torch.Tensor:
    """eps(x_t, c): the conditional pass, or CFG at `cfg` (the sampling service's); no gradients."""
    with torch.no_grad():
        return CFG(cfg)(denoise, x, t, cond, uncond, None)


def steps_per_epoch(first: int, last: int) -> int:
    """How many of a segment's steps [first, last) an epoch takes: about 0.8 of them (the official code's)."""
    return max(1, int(0.8 * (last - first)))


def segment_ends(losses: list[float], epochs: int, segments: int, settle: float) -> list[int]:
    """The step count at which each segment ended (at most `segments`), given the epoch losses so far in order:
    after `epochs` epochs, or once settled (module docstring)."""
    ends, start = [], 0
    for i in range(len(losses)):
        run = losses[start:i + 1]
        if len(run) >= epochs or _settled(run, settle):
            ends.append(i + 1)
            start = i + 1
            if len(ends) == segments:
                break
    return ends


def _settled(losses: list[float], settle: float) -> bool:
    if settle <= 0 or len(losses) < 2 * SETTLE_WINDOW:
        return False
    last = sum(losses[-SETTLE_WINDOW:]) / SETTLE_WINDOW
    before = sum(losses[-2 * SETTLE_WINDOW:-SETTLE_WINDOW]) / SETTLE_WINDOW
    return last > before * (1 - settle)


def epoch_passes(window: Window) -> float:
    """Forward passes per target of an epoch, over the segments on average (what a preview is weighed against)."""
    return sum(steps_per_epoch(*window.segment_steps(k)) for k in range(window.segments)) / window.segments


def target_pixels(images, resolution: int) -> torch.Tensor:
    """1-10 target images of one size -> [N, 3, resolution, resolution] in -1..1."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        batch = list(images)
    else:
        batch = list(images) if images is not None else []
    if not 1 <= len(batch) <= MAX_IMAGES:
        raise InputError(f"the SGE Inverter takes 1 to {MAX_IMAGES} images of the new domain; {len(batch)} were given"
                         + (". Pick the 10 most typical." if len(batch) > MAX_IMAGES else "."))
    sizes = {_size(image) for image in batch}
    if len(sizes) > 1:
        raise InputError(f"the target images have different sizes ({', '.join(f'{w}x{h}' for h, w in sorted(sizes))});"
                         " give images of one size (crop or resize them to the same size first).")
    return prepare_images(batch, resolution)


def _size(image) -> tuple[int, int]:
    if hasattr(image, "shape"):  # an HWC tensor or array
        return tuple(int(v) for v in image.shape[:2])
    return image.size[1], image.size[0]  # PIL


class SampleEmbeddings(TrainableSet):
    """What the inversion trains: G, one parameter [N, K, C, h, w] under one optimizer (the official
    `GradientConfig`). The model itself never changes."""

    kind = "sge"

    def __init__(self, model: Model, count: int, segments: int, shape: tuple[int, ...], generator: torch.Generator,
                 steps: int):
        super().__init__(model, [], train_token=False, train_text_encoder=False)
        self.embeddings = torch.nn.Parameter(torch.randn(count, segments, *shape, generator=generator)
                                             .to(model.device))
        self.history = torch.zeros(steps)  # each epoch's loss so far: which segment the next one trains

    def weight_parameters(self):
        return [self.embeddings]

    def state(self):
        return {"embeddings": self.embeddings, "history": self.history}

    def losses(self, steps: int) -> list[float]:
        return self.history[:steps].tolist()


@dataclass
class _Epochs:
    """The inversion's data: every step is one epoch of one segment on all targets (the objective knows them)."""

    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> Batch:
        return Batch(torch.empty(0), [], extra={"step": step})


def invert(model: Model, images, settings: InvertSettings | None = None, *, checkpoint_dir: Path | None = None,
           progress=None, cancel: Callable[[], bool] | None = None, name: str = "SGE Inverter") -> SGESet:
    """An SGE set for 1-10 images of a new domain (the model is never changed)."""
    settings = settings or InvertSettings()
    if settings.mapping not in MAPPINGS:
        raise InputError(f"window mapping '{settings.mapping}' is not one of {', '.join(MAPPINGS)}.")
    if settings.q_noise not in Q_NOISES:
        raise InputError(f"q_noise '{settings.q_noise}' is not one of {', '.join(Q_NOISES)}.")
    if settings.epochs < 1 or settings.steps < 2:
        raise InputError(f"epochs must be at least 1 and steps at least 2 (got {settings.epochs}, {settings.steps}).")
    with training_mode(model):
        return _invert(model, images, settings, checkpoint_dir, progress, cancel, name)


def _invert(model, images, settings, checkpoint_dir, progress, cancel, name) -> SGESet:
    from diffusers import DDIMScheduler

    pixels = target_pixels(images, model.default_size)
    scheduler = DDIMScheduler.from_config(model.scheduler_config)
    scheduler.set_timesteps(settings.steps)
    timesteps = scheduler.timesteps.cpu()
    alphas = scheduler.alphas_cumprod.to(model.device, torch.float32)
    window = Window(settings.steps, *settings.window) if settings.window else \
        map_window(timesteps, scheduler.alphas_cumprod, settings.mapping)
    with torch.no_grad():
        latents = model.vae.encode(pixels.to(model.device, model.vae.dtype)).latent_dist.mean
        x0 = (latents * model.vae.config.scaling_factor).to(torch.float32).clone()
        cond = encode_prompts(model, [settings.prompt] * len(x0))
        uncond = encode_negative(model, [""] * len(x0))
    denoise = unet_denoiser(model, model.default_size, model.default_size)
    embeddings = SampleEmbeddings(model, len(x0), window.segments, tuple(x0.shape[1:]),
                                  torch.Generator().manual_seed(settings.seed), window.segments * settings.epochs)

    def ends_before(step: int) -> list[int]:
        return segment_ends(embeddings.losses(step), settings.epochs, window.segments, settings.settle)
    clean_first = timesteps.flip(0).long()  # DDIM timestep of each step counted from the clean end
    final_alpha = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32, device=model.device)
    latest: dict[str, torch.Tensor] = {}
    fixed_noise = fixed_q_noise(x0.shape).to(x0) if settings.q_noise == "fixed" else None
    cached: dict[int, torch.Tensor] = {}  # fixed noise: the base prediction at step j's x_t, the same every epoch

    def base_eps(js: list[int], x_t: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
        """eps(x_t, c) of every chosen step, the UNet run once on all of them as one batch."""
        todo = [k for k, j in enumerate(js) if j not in cached]
        n = len(x0)
        eps = torch.empty_like(x_t)
        if todo:
            rows = torch.cat([torch.arange(k * n, (k + 1) * n) for k in todo])
            timestep = torch.cat([torch.full((n,), int(clean_first[js[k]]), device=model.device) for k in todo])
            output = prediction(denoise, x_t[rows].to(model.dtype), timestep, Conditioning.cat([cond] * len(todo)),
                                Conditioning.cat([uncond] * len(todo)), settings.cfg).float()
            eps[rows] = eps_of(output, x_t[rows], a_t[rows], model.prediction_type)
            if fixed_noise is not None:
                cached.update({js[k]: eps[k * n:(k + 1) * n].clone() for k in todo})
        for k, j in enumerate(js):
            if k not in todo:
                eps[k * n:(k + 1) * n] = cached[j]
        return eps

    def steps_loss(segment: int, js: list[int], generator: torch.Generator) -> torch.Tensor:
        """Guided DDIM steps from x_t (steps js from the clean end) to the step after each, against q(x0) at both;
        the sum over the steps of each one's loss."""
        n = len(x0)
        a_t = torch.cat([alphas[int(clean_first[j])].expand(n) for j in js]).view(-1, 1, 1, 1)
        a_prev = torch.cat([(alphas[int(clean_first[j - 1])] if j > 0 else final_alpha).expand(n) for j in js]) \
            .view(-1, 1, 1, 1)  # where the sampler's DDIM step lands
        clean = x0.repeat(len(js), 1, 1, 1)
        if fixed_noise is None:  # fresh, independent noises for x_t and y (official q_sample_noise, random)
            n1 = torch.randn(clean.shape, generator=generator).to(clean)
            n2 = torch.randn(clean.shape, generator=generator).to(clean)
        else:
            n1 = n2 = fixed_noise.repeat(len(js), 1, 1, 1)
        x_t = a_t.sqrt() * clean + (1 - a_t).sqrt() * n1
        y = a_prev.sqrt() * clean + (1 - a_prev).sqrt() * n2
        eps = base_eps(js, x_t, a_t)
        g = embeddings.embeddings[:, segment]
        eps_hat = eps - (1 - a_t).sqrt() * settings.scale * g.repeat(len(js), 1, 1, 1)
        x0_hat = (x_t - (1 - a_t).sqrt() * eps_hat) / a_t.sqrt()
        x_prev = a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * eps_hat
        centred = (g - g.mean(0, keepdim=True)).pow(2).mean()
        latest["x0"] = x0_hat[:n].detach()
        per_step = len(js) * (F.mse_loss(x0_hat, clean) + F.mse_loss(x_prev, y))  # each step's mse, summed
        return per_step + len(js) * settings.penalty * centred

    def epoch_loss(run: TrainingRun, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        """One epoch of one segment: the losses of ~0.8 x its steps (one in each equal sub-range), summed, as
        the official code accumulates them before its one optimizer step per epoch."""
        step = batch.extra["step"]
        segment = len(ends_before(step))
        first, last = window.segment_steps(segment)
        count = steps_per_epoch(first, last)
        width = (last - first) / count
        steps = [int(first + width * i + float(torch.rand((), generator=generator)) * width) for i in range(count)]
        loss = steps_loss(segment, steps, generator)
        embeddings.history[step] = float(loss.detach())
        return loss

    def preview(_model: Model):  # the first target's current x0_hat: a VAE decode, no UNet pass
        return preview_image(model, latest["x0"].to(model.dtype)) if "x0" in latest else None

    preview.passes = 1  # what it costs, in denoiser passes over one sample (the PreviewBudget's unit)

    run = TrainingRun(model, lambda _: embeddings, _Epochs(),
                      RunSettings(window.segments * settings.epochs, checkpoint_dir, settings.checkpoint_every,
                                  signature=settings.signature(), name=name,
                                  done=lambda step: len(ends_before(step)) == window.segments),
                      StepSettings(len(x0), settings.seed, passes=len(x0) * epoch_passes(window)),
                      optimizer=lambda t: torch.optim.Adam(t.weight_parameters(), lr=settings.learning_rate),
                      objective=epoch_loss, train_unet_mode=False,
                      hooks=RunHooks(progress=progress, cancel=cancel, preview=preview))
    outcome = run.train(lambda trainable, outcome: outcome)
    ends = segment_ends(outcome.losses, settings.epochs, window.segments, settings.settle)
    sge = embeddings.embeddings.detach().float().cpu()
    return SGESet(sge, x0.cpu(), window, settings.scale, settings.prompt, settings.cfg, model.family,
                  model.fingerprint(), model.prediction_type,
                  {"epochs": settings.epochs, "learning_rate": settings.learning_rate, "penalty": settings.penalty,
                   "mapping": settings.mapping, "seed": settings.seed, "images": len(x0), "q_noise": settings.q_noise,
                   "settle": settings.settle, "segment_epochs": [b - a for a, b in zip([0, *ends], ends, strict=False)],
                   "losses": [round(v, 6) for v in outcome.losses[-window.segments * 1:]]})
