"""The one denoising loop of ConceptKit.

It reads top to bottom as the algorithm does: check inputs, encode the prompts, prepare seeded
latents, denoise (conditioning provider -> attention controller -> guidance -> scheduler step),
decode. Image i of a batch is drawn from its own generator seeded `seed + i`, so one seed gives
the same image whatever the batch size.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ..concepts.apply import concepts_applied
from ..concepts.weak_model import checkpoint_difference
from ..errors import Cancelled, InputError
from ..model import Model
from .conditioning import Conditioning, encode_negative, encode_prompts
from .extensions import AttentionController, ConditioningProvider, StaticConditioning
from .guidance import CFG, Denoise, Guidance, Passes, Step
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
    conditioning: ConditioningProvider | None = None,
    attention: AttentionController | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    decode: bool = True,
    pretrained: Model | None = None,
) -> SampleResult:
    """Generate images. A string prompt is repeated `batch_size` times; a list gives one image each.
    Concepts applied to the model (`apply_concept`) are in effect for the whole call. Weak-model guidance
    interpolates them back toward the base; for a fine-tuned checkpoint, give its base as `pretrained`."""
    with concepts_applied(model) as weak:
        prompts = _broadcast(prompt, batch_size, "prompt")
        negatives = _broadcast(negative_prompt, len(prompts), "negative_prompt")
        width, height = width or model.default_size, height or model.default_size
        _check_size(model, width, height)
        if steps < 1:
            raise InputError(f"steps must be at least 1 (got {steps}).")
        guidance = guidance or CFG()
        attention = attention or AttentionController()
        encode = None
        if conditioning is None:
            def encode(reads: str) -> Conditioning:
                return encode_prompts(model, prompts) if reads == "prompt" else encode_negative(model, negatives)

            conditioning = StaticConditioning(encode("prompt"), encode("negative"))
        if pretrained is not None:
            weak.dense += checkpoint_difference(model, pretrained)
        if guidance.uses_weak_model and weak.empty:
            raise InputError("this guidance needs a fine-tuned model to weaken: apply a concept to the model, or give "
                             "the fine-tuned model with its base model; without either use CFG.")

        scheduler = make_scheduler(model.scheduler_config, sampler)
        scheduler.set_timesteps(steps, device=model.device)
        seeds = [(seed + i) % 2**64 for i in range(len(prompts))]
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        shape = (len(prompts), model.latent_channels, height // model.vae_scale_factor, width // model.vae_scale_factor)
        latents = randn_tensor(shape, generator=generators, device=model.device, dtype=model.dtype)
        latents = latents * scheduler.init_noise_sigma
        denoise = Passes(unet_denoiser(model, width, height), weak, encode)
        step_kwargs = _step_kwargs(scheduler, eta, generators)

        timesteps = scheduler.timesteps
        attention.attach(model.unet)
        try:
            for i, t in enumerate(timesteps):
                if cancel is not None and cancel():
                    raise Cancelled(f"sampling was cancelled at step {i} of {len(timesteps)}.")
                step = Step(i, len(timesteps), t)
                cond, uncond = conditioning(step, latents)
                latents = attention.before_step(step, latents, denoise, cond)
                with torch.no_grad():
                    model_input = scheduler.scale_model_input(latents, t)
                    output = guidance(denoise, model_input, t, cond, uncond, step)
                    latents = scheduler.step(output, t, latents, **step_kwargs, return_dict=False)[0]
                if progress is not None:
                    progress(i + 1, len(timesteps), lambda current=latents: preview_image(model, current))
        finally:
            attention.detach(model.unet)
        images = decode_latents(model, latents) if decode else None
        return SampleResult(images=images, latents=latents, seeds=seeds)


def unet_denoiser(model: Model, width: int, height: int) -> Denoise:
    """One UNet evaluation of a batch, with SDXL's size conditioning when the model needs it."""
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=model.device, dtype=model.dtype)

    def denoise(x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        added = None
        if model.is_sdxl:
            added = {"text_embeds": cond.pooled, "time_ids": time_ids.repeat(x.shape[0], 1)}
        return model.unet(x, t, encoder_hidden_states=cond.hidden, added_cond_kwargs=added, return_dict=False)[0]

    return denoise


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


def _check_size(model: Model, width: int, height: int) -> None:
    multiple = model.vae_scale_factor * 2 ** (len(model.unet.config.block_out_channels) - 1)
    for name, value in (("width", width), ("height", height)):
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
