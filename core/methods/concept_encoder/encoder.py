"""E4T's encoder (METHODS.md §1): features of the concept image from a frozen backbone, and pooled UNet
features of the current noisy latent (run with the empty prompt), to a word-embedding offset E per text
encoder; the placeholder's vector is e* = e_class + s * E. Weight offsets W * (1 + u v^T) on every attention
q/k/v projection train with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...model import Conditioning, Model, unet_denoiser

DEFAULT_SCALE = 0.1  # s, the paper's value
DEFAULT_ENCODER_WEIGHT = 0.01  # lambda_e on ||E||^2, the paper's value


@dataclass(frozen=True)
class EncoderSpec:
    """Sizes of one encoder; stored with it, so a file says which base model it fits."""

    image_channels: int  # the backbone's feature channels
    spatial: bool  # the backbone gives a map [C, H, W] (the world's VAE encoder) or a vector [C] (CLIP vision)
    unet_features: int  # length of the pooled UNet features
    token_dims: tuple[int, ...]  # one per text encoder
    hidden: int = 256
    scale: float = DEFAULT_SCALE


class ConceptEncoder(nn.Module):
    """E(image features, UNet features) -> one offset per text encoder ([B, dim_i] each)."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        if spec.spatial:
            self.image_head = nn.Sequential(nn.Conv2d(spec.image_channels, 128, 3, 2, 1), nn.SiLU(),
                                            nn.Conv2d(128, 128, 3, 2, 1), nn.SiLU())
            image_out = 256  # mean- and max-pooled
        else:
            self.image_head = nn.Sequential(nn.Linear(spec.image_channels, 256), nn.SiLU())
            image_out = 256
        self.unet_norm = nn.LayerNorm(spec.unet_features)
        self.mlp = nn.Sequential(nn.Linear(image_out + spec.unet_features, spec.hidden), nn.SiLU(),
                                 nn.Linear(spec.hidden, spec.hidden), nn.SiLU())
        self.heads = nn.ModuleList(nn.Linear(spec.hidden, d) for d in spec.token_dims)

    def image_code(self, image_features: torch.Tensor) -> torch.Tensor:
        """The image's half of the encoder ([B, 256]): the same at every step of a sampling run."""
        image = self.image_head(image_features)
        if self.spec.spatial:
            image = torch.cat([image.mean(dim=(2, 3)), image.amax(dim=(2, 3))], dim=1)
        return image

    def from_code(self, image_code: torch.Tensor, unet_features: torch.Tensor) -> list[torch.Tensor]:
        hidden = self.mlp(torch.cat([image_code, self.unet_norm(unet_features.to(image_code))], dim=1))
        return [head(hidden) for head in self.heads]

    def forward(self, image_features: torch.Tensor, unet_features: torch.Tensor) -> list[torch.Tensor]:
        return self.from_code(self.image_code(image_features), unet_features)


def placeholder_vectors(offsets: list[torch.Tensor], class_vectors: list[torch.Tensor], scale: float
                        ) -> list[torch.Tensor]:
    """e* = e_class + s * E, per text encoder ([B, dim] rows: one per prompt of the batch)."""
    return [c.to(o) + scale * o for o, c in zip(offsets, class_vectors, strict=True)]


def encoder_penalty(offsets: list[torch.Tensor]) -> torch.Tensor:
    """||E||^2, mean over the batch, summed over text encoders."""
    return sum(o.pow(2).sum(-1).mean() for o in offsets)


# --- pooled UNet features of the current latent ------------------------------------------------------------

def unet_feature_size(model: Model) -> int:
    channels = list(model.unet.config.block_out_channels)
    return sum(channels) + channels[-1]


class UnetFeatureTap:
    """Forward hooks that pool each UNet call's down-block and mid-block outputs ([N, F]: the features E4T's
    encoder reads) and hand them, with the call's text conditioning [N, tokens, dim], to `found(features,
    context)`. Attached, it costs nothing but the pooling: the features come from passes that run anyway."""

    def __init__(self, model: Model, found: Callable[[torch.Tensor, torch.Tensor | None], None]):
        self.model, self.found = model, found
        self._parts: list[torch.Tensor] = []
        self._context: torch.Tensor | None = None

    def attach(self) -> list:
        unet = self.model.unet
        handles = [unet.register_forward_pre_hook(self._start, with_kwargs=True)]
        handles += [block.register_forward_hook(self._grab) for block in [*unet.down_blocks, unet.mid_block]]
        return handles

    def _start(self, module, args, kwargs):
        self._parts.clear()
        context = kwargs.get("encoder_hidden_states")
        self._context = context if context is not None else (args[2] if len(args) > 2 else None)

    def _grab(self, module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        self._parts.append(hidden.detach().float().mean(dim=(2, 3)))
        if module is self.model.unet.mid_block:
            self.found(torch.cat(self._parts, dim=1), self._context)
            self._parts.clear()

    @contextmanager
    def attached(self) -> Iterator[None]:
        handles = self.attach()
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


class _FeaturesFound(Exception):
    """Ends a UNet pass once the features are read: the up-blocks would compute nothing the encoder uses."""


def empty_prompt_features(model: Model, noisy: torch.Tensor, timesteps: torch.Tensor, empty: Conditioning
                          ) -> torch.Tensor:
    """Pooled UNet features of x_t with the empty prompt, no gradients (pre-training and tuning); the pass stops
    after the mid-block, where the features end."""
    size = noisy.shape[-1] * model.vae_scale_factor
    found: list[torch.Tensor] = []

    def keep(features: torch.Tensor, context) -> None:
        found.append(features)
        raise _FeaturesFound

    with torch.no_grad(), UnetFeatureTap(model, keep).attached():
        try:
            unet_denoiser(model, size, size)(noisy, timesteps, empty)
        except _FeaturesFound:
            pass
    return found[-1]


# --- weight offsets on every attention q/k/v: W' = W * (1 + u v^T) -------------------------------------------

ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v")


def attention_projection_names(model: Model) -> list[str]:
    """The UNet's attention q/k/v Linear modules, in module order: what the offsets act on."""
    return [n for n, m in model.unet.named_modules() if isinstance(m, nn.Linear) and n.endswith(ATTENTION_PROJECTIONS)]


class AttentionOffsets(nn.Module):
    """Low-rank multiplicative offsets of the UNet's attention q/k/v weights, trained with the encoder:
    W' = W * (1 + u v^T) (elementwise), u [out, r] starting at zero, so training starts at the base model."""

    def __init__(self, model: Model, rank: int = 1, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.names = attention_projection_names(model)
        self.enabled = True
        self.u = nn.ParameterList()
        self.v = nn.ParameterList()
        for name in self.names:
            out_features, in_features = model.unet.get_submodule(name).weight.shape
            self.u.append(nn.Parameter(torch.zeros(out_features, rank)))
            self.v.append(nn.Parameter(torch.randn(in_features, rank, generator=generator) / in_features ** 0.5))

    def delta(self, index: int, weight: torch.Tensor) -> torch.Tensor:
        """W * (u v^T): what the offset adds to the weight."""
        return weight * (self.u[index] @ self.v[index].T).to(weight)

    def attach(self, model: Model) -> list:
        """Forward hooks through which the offsets act while `enabled` (gradients reach u and v; the base weights
        stay untouched). Returns the hooks' handles."""
        handles = []
        for index, name in enumerate(self.names):
            module = model.unet.get_submodule(name)

            def hook(module, inputs, output, index=index):
                if not self.enabled:
                    return output
                return output + F.linear(inputs[0], self.delta(index, module.weight))

            handles.append(module.register_forward_hook(hook))
        return handles

    def dense(self, model: Model) -> dict[str, torch.Tensor]:
        """'unet.<name>.weight' -> the weight offset, for a concept file (applied in place at sampling: no cost)."""
        return {f"unet.{name}.weight": self.delta(i, model.unet.get_submodule(name).weight).detach().clone()
                for i, name in enumerate(self.names)}
