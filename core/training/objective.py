"""What a training step minimizes, beside the loss terms: an Objective.

The default is the denoising loss, split in two so that an objective can change either half:
- `noising`: a batch -> VAE latents (encoded, or the source's own encoding of fixed images), noise, timesteps,
  the noisy latents x_t and the target;
- `prediction`: the UNet's prediction on x_t for the captions.
An objective that conditions on x_t (E4T's encoder reads the noisy latent) overrides `prediction` (or
`__call__`) and may add auxiliary losses to what `__call__` returns.

A loss term that is itself a denoising loss on other images (prior preservation's class images, a memory's
replay) can ride the objective's pass: it gives a `Rider` (its noised samples, their captions, its loss on the
predictions) and the objective predicts its samples in the same UNet call as its own batch, as the diffusers
DreamBooth script puts class images in the instance batch: one pass of a larger batch instead of two. A rider's
samples depend on nothing that trains, so the run draws them some steps ahead, and a `taught` rider's teacher
predictions (the model before the run, frozen) are made for all those steps in one call (`teach`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
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

    def teacher(self) -> AbstractContextManager: ...

    def serving_token(self, vectors: list[torch.Tensor]) -> AbstractContextManager: ...


@dataclass
class Noised:
    latents: torch.Tensor  # clean latents x_0 (scaled as the UNet sees them)
    noise: torch.Tensor
    timesteps: torch.Tensor
    noisy: torch.Tensor  # x_t
    target: torch.Tensor  # what the UNet should predict (the noise, or v for v-prediction models)


    def select(self, index: torch.Tensor) -> Noised:
        return Noised(*(getattr(self, f.name)[index] for f in fields(self)))

    @staticmethod
    def cat(parts: list[Noised]) -> Noised:
        return Noised(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Noised)))


@dataclass
class Posterior:
    """The VAE's latent distribution of images (unscaled): encoded once for images a run draws from again and
    again, sampled afresh at every step as the encoding would be."""

    mean: torch.Tensor
    std: torch.Tensor

    def select(self, index: torch.Tensor) -> Posterior:
        return Posterior(self.mean[index], self.std[index])


def encode_posterior(model, images: torch.Tensor) -> Posterior:
    """The latent distribution of images [B, 3, H, W] in -1..1, in chunks."""
    with torch.no_grad():
        parts = [model.vae.encode(chunk.to(model.device, model.vae.dtype)).latent_dist for chunk in images.split(16)]
    return Posterior(torch.cat([p.mean for p in parts]), torch.cat([p.std for p in parts]))


@dataclass
class Rider:
    """Samples a loss term adds to the objective's own UNet pass, and its loss on their predictions. A rider that is
    `taught` also gets the teacher's (the model before the run) predictions on the same samples (`held`, made by
    `teach`, for many riders in one call)."""

    noised: Noised
    captions: list[str]
    # predictions [B, C, h, w] (float) -> the term's scalar; a taught rider's: (predictions, the teacher's)
    loss: Callable[..., torch.Tensor]
    taught: bool = False
    held: torch.Tensor | None = None  # a taught rider's teacher predictions, once made

    def loss_on(self, prediction: torch.Tensor) -> torch.Tensor:
        if not self.taught:
            return self.loss(prediction)
        if self.held is None:
            raise RuntimeError("a taught rider's loss needs the teacher's predictions: call teach() first.")
        return self.loss(prediction, self.held)


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, H, W] in -1..1
    captions: list[str]
    extra: dict | None = None  # what a data source gives beside (e.g. another view of the same subject)
    # the images' latent distribution for a model's VAE, where the source holds it already (fixed images it draws
    # from again and again); None: the objective encodes the images
    posterior: Callable[[object], Posterior] | None = None


class DenoisingObjective:
    """||eps - eps_theta(x_t, t, c)||^2 (or v for v-prediction models)."""

    shares_pass = True  # riders' samples join its UNet call (an objective whose prediction reads its batch: False)

    def noising(self, run: Run, batch: Batch, generator: torch.Generator) -> Noised:
        posterior = batch.posterior(run.model) if batch.posterior else encode_posterior(run.model, batch.images)
        return self.noising_posterior(run, posterior, generator)

    def noising_posterior(self, run: Run, posterior: Posterior, generator: torch.Generator) -> Noised:
        model, scheduler = run.model, run.noise_scheduler
        with torch.no_grad():
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
        return plain_prediction(run, noised, captions)

    def __call__(self, run: Run, batch: Batch, generator: torch.Generator, riders: list[Rider] = ()) -> torch.Tensor:
        """The loss on the batch and the riders' (taught ones taught already, see `teach`), the riders predicted in
        the same UNet call when their latents are the batch's size (else each in its own)."""
        noised = self.noising(run, batch, generator)
        together, apart = [], []
        for rider in riders:
            (together if rider.noised.noisy.shape[1:] == noised.noisy.shape[1:] else apart).append(rider)
        prediction = self.prediction(run, Noised.cat([noised, *(r.noised for r in together)]),
                                     batch.captions + [c for r in together for c in r.captions], batch).float()
        parts = prediction.split([len(noised.noisy), *(len(r.noised.noisy) for r in together)])
        loss = F.mse_loss(parts[0], noised.target.float())
        for rider, part in zip(together, parts[1:], strict=True):
            loss = loss + rider.loss_on(part)
        for rider in apart:
            loss = loss + ride_alone(run, rider)
        return loss


def plain_prediction(run: Run, noised: Noised, captions: list[str]) -> torch.Tensor:
    """The UNet's prediction on noised latents for captions, under the run's autocast."""
    factor = run.model.vae_scale_factor
    denoise = unet_denoiser(run.model, noised.noisy.shape[-1] * factor, noised.noisy.shape[-2] * factor)
    with run.accelerator.autocast():
        return denoise(noised.noisy, noised.timesteps, encode_text(run.model, captions))


def ride_alone(run: Run, rider: Rider) -> torch.Tensor:
    """A rider's loss with a UNet call of its own (beside an objective that does not share its pass)."""
    teach(run, [rider])
    return rider.loss_on(plain_prediction(run, rider.noised, rider.captions).float())


TEACHER_PIXELS = 48 * 16 * 16  # latent pixels per teacher call: 48 samples of the embedded model, 3 of SD1.5's


def teach(run: Run, riders: list[Rider], between_calls: Callable[[], None] | None = None) -> None:
    """Give the taught riders that lack them the teacher's predictions on their samples: riders of one latent size
    together, up to `TEACHER_PIXELS` latent pixels a call (the teacher's weights are read once for all of them).
    `between_calls()` runs before every call but the first (a Cancel check: it may raise)."""
    waiting = [r for r in riders if r.taught and r.held is None]
    if not waiting:
        return
    by_size: dict[tuple, list[Rider]] = {}
    for rider in waiting:
        by_size.setdefault(tuple(rider.noised.noisy.shape[1:]), []).append(rider)
    factor = run.model.vae_scale_factor
    first = True
    with run.teacher() as teacher:
        for group in by_size.values():
            noised = Noised.cat([r.noised for r in group])
            captions = [c for r in group for c in r.captions]
            height, width = noised.noisy.shape[-2:]
            denoise = unet_denoiser(teacher, width * factor, height * factor)
            chunk = max(1, TEACHER_PIXELS // (height * width))
            parts = []
            for i in range(0, len(captions), chunk):
                if not first and between_calls is not None:
                    between_calls()
                first = False
                parts.append(denoise(noised.noisy[i:i + chunk], noised.timesteps[i:i + chunk],
                                     encode_text(teacher, captions[i:i + chunk])).float())
            for rider, part in zip(group, torch.cat(parts).split([len(r.noised.noisy) for r in group]), strict=True):
                rider.held = part
