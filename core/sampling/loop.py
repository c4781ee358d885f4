"""The one denoising loop of ConceptKit.

It reads top to bottom as the algorithm does: check inputs, encode the prompts, prepare seeded
latents (pure noise, or given latents noised to the first step run: img2img), set up the guidance,
denoise (conditioning, with the patches' step hooks -> attention controller -> guidance -> scheduler step),
decode.
Image i of a batch is drawn from its own generator seeded `seed + i`, so one seed gives the same
image whatever the batch size. The model's patches (applied concepts, ...) are in effect throughout.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from ..errors import Cancelled, InputError
from ..model import Conditioning, Model, encode_negative, encode_prompts, patches_in_effect, unet_denoiser
from .extensions import (
    AttentionController,
    ChainedAttention,
    StaticConditioning,
    StepConditioning,
)
from .guidance import CFG, Guidance, SamplingContext, Step
from .preview import decode_latents, preview_image
from .schedulers import make_scheduler

ProgressFn = Callable[[int, int, Callable[[], Image.Image]], None]
CancelFn = Callable[[], bool]


@dataclass
class SampleResult:
    images: torch.Tensor | None  # [B, H, W, 3] float 0..1 (ComfyUI's IMAGE layout), None when not decoded
    latents: torch.Tensor  # [B, C, h, w] final latents, unscaled (as the UNet sees them)
    seeds: list[int]


def sample(
    model: Model,
    prompt: str | list[str],
    *,
    negative_prompt: str | list[str] = "",
    batch_size: int = 1,
    seed: int = 0,
    steps: int = 25,
    sampler: str = "ddim",
    guidance: Guidance | None = None,
    width: int | None = None,
    height: int | None = None,
    eta: float = 0.0,
    init_latents: torch.Tensor | None = None,
    start_step: int = 0,
    init_noise: torch.Tensor | None = None,
    attention: AttentionController | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    decode: bool = True,
) -> SampleResult:
    """Generate images. A string prompt is repeated `batch_size` times; a list gives one image each.
    With `init_latents` (VAE latents times its scaling factor, as the UNet sees them) the run starts at
    `start_step` of the `steps`-step schedule from those latents noised to that step (img2img: strength
    (steps - start_step) / steps); `init_noise` replaces the seeded noise they are noised with (an inversion that
    learned its embeddings on one fixed noise starts from it)."""
    with patches_in_effect(model) as patches:
        prompts = _broadcast(prompt, batch_size, "prompt")
        negatives = _broadcast(negative_prompt, len(prompts), "negative_prompt")
        width, height = width or model.default_size, height or model.default_size
        _check_size(model, width, height)
        if steps < 1:
            raise InputError(f"steps must be at least 1 (got {steps}).")
        if not 0 <= start_step < steps:
            raise InputError(f"start_step must be between 0 and {steps - 1} (got {start_step}).")
        guidance = guidance or CFG()
        attention = ChainedAttention([c for c in (attention, *patches.attention) if c is not None])
        attention.begin(model, prompts)
        scheduler = make_scheduler(model.scheduler_config, sampler)
        scheduler.set_timesteps(steps, device=model.device)
        denoise = unet_denoiser(model, width, height)

        def encode(reads: str) -> Conditioning:
            return encode_prompts(model, prompts) if reads == "prompt" else encode_negative(model, negatives)

        conditioning = StaticConditioning(encode("prompt"), encode("negative"))
        if patches.step_hooks:  # a patch's step hook serves its token per step (E4T): the prompt is encoded anew
            conditioning = StepConditioning(conditioning, patches, scheduler, denoise, encode,
                                            _names_any(negatives, patches))
        seeds = [(seed + i) % 2**64 for i in range(len(prompts))]
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        shape = (len(prompts), model.latent_channels, height // model.vae_scale_factor, width // model.vae_scale_factor)
        from diffusers.utils.torch_utils import randn_tensor

        noise = randn_tensor(shape, generator=generators, device=model.device, dtype=model.dtype)
        timesteps = scheduler.timesteps[start_step * scheduler.order:]
        if init_latents is None:
            latents = noise * scheduler.init_noise_sigma
        else:
            start_noise = noise if init_noise is None else init_noise.to(noise)
            latents = _noised(scheduler, init_latents, start_noise, timesteps, start_step)
        step_guidance = guidance.setup(SamplingContext(model, patches, scheduler, generators, encode))
        step_kwargs = _step_kwargs(scheduler, eta, generators)

        attention.attach(model.unet)
        try:
            for i, t in enumerate(timesteps):
                if cancel is not None and cancel():
                    raise Cancelled(f"sampling was cancelled at step {i} of {len(timesteps)}.")
                step = Step(start_step + i, steps, t, _alpha_bar(scheduler, t), generators)
                cond, uncond = conditioning(step, latents)
                latents = attention.before_step(step, latents, denoise, cond)
                with torch.no_grad():
                    model_input = scheduler.scale_model_input(latents, t)
                    output = step_guidance(denoise, model_input, t, cond, uncond, step)
                    stepped = scheduler.step(output, t, latents, **step_kwargs, return_dict=True)
                    pred_x0 = _predicted_x0(stepped, output, latents, step, model.prediction_type)
                    latents = stepped.prev_sample
                step_guidance.after_step(step, latents, pred_x0)
                if progress is not None:
                    progress(i + 1, len(timesteps), lambda current=latents: preview_image(model, current))
        finally:
            attention.detach(model.unet)
        images = decode_latents(model, latents) if decode else None
        return SampleResult(images=images, latents=latents, seeds=seeds)


def _names_any(prompts: list[str], patches) -> bool:
    """Whether any prompt names an added trigger: with step hooks its vector may change, so such a prompt is
    encoded again at every step."""
    words = {w for p in prompts for w in p.replace(",", " ").split()}
    return any(row.trigger in words for row in patches.tokens)


def _noised(scheduler, init_latents: torch.Tensor, noise: torch.Tensor, timesteps, start_step: int) -> torch.Tensor:
    """img2img's start: the given latents noised to the first timestep run (as diffusers' img2img pipeline)."""
    if tuple(init_latents.shape) != tuple(noise.shape):
        raise InputError(f"init_latents have shape {tuple(init_latents.shape)}; this run needs {tuple(noise.shape)} "
                         "(one latent per image, at the model's latent size).")
    if not torch.isfinite(init_latents).all():
        raise InputError("init_latents contain NaN or infinite values.")
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start_step * scheduler.order)
    start = timesteps[:1].repeat(noise.shape[0])
    return scheduler.add_noise(init_latents.to(noise), noise, start)


def _alpha_bar(scheduler, t: torch.Tensor) -> torch.Tensor:
    """The cumulative alpha of timestep t (the nearest integer timestep for fractional ones)."""
    index = int(torch.as_tensor(t).round().clamp(0, len(scheduler.alphas_cumprod) - 1))
    return scheduler.alphas_cumprod[index]


def _predicted_x0(stepped, output: torch.Tensor, latents: torch.Tensor, step: Step, prediction_type: str):
    """The scheduler's own x0 prediction, or (schedulers that do not report it) the one of the alpha-bar."""
    x0 = getattr(stepped, "pred_original_sample", None)
    if x0 is not None:
        return x0
    alpha_bar = step.alpha_bar.to(latents)
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * latents - (1 - alpha_bar).sqrt() * output
    return (latents - (1 - alpha_bar).sqrt() * output) / alpha_bar.sqrt()


def _broadcast(value: str | list[str], n: int, name: str) -> list[str]:
    if n < 1:
        raise InputError(f"batch_size must be at least 1 (got {n}).")
    if isinstance(value, str):
        return [value] * n
    values = list(value)
    if not values:
        raise InputError(f"{name} is an empty list; give at least one.")
    if len(values) == 1:
        return values * n
    if n not in (1, len(values)):
        raise InputError(f"{name} has {len(values)} entries but the batch has {n} images.")
    return values


MAX_SIDE_FACTOR = 4  # a side at most 4x the model's own size (16x its pixels)


def _check_size(model: Model, width: int, height: int) -> None:
    multiple = model.vae_scale_factor * 2 ** (len(model.unet.config.block_out_channels) - 1)
    largest = MAX_SIDE_FACTOR * model.default_size
    for name, value in (("width", width), ("height", height)):
        if value > largest:
            raise InputError(f"{name} {value} is far beyond this model's size ({model.default_size}); use at most "
                             f"{largest} (0 gives the model's own size).")
        if value < multiple or value % multiple:
            raise InputError(
                f"{name} {value} does not fit this model: use a multiple of {multiple} "
                f"(for example {max(multiple, round(value / multiple) * multiple)})."
            )


def _step_kwargs(scheduler, eta: float, generators: list[torch.Generator]) -> dict:
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generators
    return kwargs
