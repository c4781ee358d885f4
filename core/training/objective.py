"""What a training step minimizes, beside the loss terms: an Objective.

The default is the denoising loss, split in two so that an objective can change either half:
- `noising`: images -> VAE latents, noise, timesteps, the noisy latents x_t and the target;
- `prediction`: the UNet's prediction on x_t for the captions.
An objective that conditions on x_t (E4T's encoder reads the noisy latent) overrides `prediction` (or
`__call__`) and may add auxiliary losses to what `__call__` returns.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..model import encode_text, unet_denoiser


class Run(Protocol):
    """What an objective and a loss term see of the training run (a TrainingRun): the model as it trains, what
    trains, and the run's helpers."""

    model: Any  # the Model, its patches in effect
    trainable: Any  # the TrainableSet
    accelerator: Any
    noise_scheduler: Any
    batch_size: int

    def denoising_loss(self, images: torch.Tensor, captions: list[str], generator: torch.Generator
                       ) -> torch.Tensor: ...

    def teacher(self) -> AbstractContextManager: ...

    def serving_token(self, vectors: list[torch.Tensor]) -> AbstractContextManager: ...


@dataclass
class Noised:
    latents: torch.Tensor  # clean latents x_0 (scaled as the UNet sees them)
    noise: torch.Tensor
    timesteps: torch.Tensor
    noisy: torch.Tensor  # x_t
    target: torch.Tensor  # what the UNet should predict (the noise, or v for v-prediction models)


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, H, W] in -1..1
    captions: list[str]
    extra: dict | None = None  # what a data source gives beside (e.g. another view of the same subject)


class DenoisingObjective:
    """||eps - eps_theta(x_t, t, c)||^2 (or v for v-prediction models)."""

    def noising(self, run: Run, images: torch.Tensor, generator: torch.Generator) -> Noised:
        model, scheduler = run.model, run.noise_scheduler
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
        return Noised(latents, noise, t, noisy, target)

    def prediction(self, run: Run, noised: Noised, captions: list[str], batch: Batch) -> torch.Tensor:
        size = batch.images.shape[-1]
        with run.accelerator.autocast():
            return unet_denoiser(run.model, size, size)(noised.noisy, noised.timesteps,
                                                        encode_text(run.model, captions))

    def __call__(self, run: Run, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        noised = self.noising(run, batch.images, generator)
        prediction = self.prediction(run, noised, batch.captions, batch)
        return F.mse_loss(prediction.float(), noised.target.float())
