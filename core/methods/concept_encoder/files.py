"""A domain encoder as a file, and what an E4T concept holds.

Encoder file: safetensors (`encoder.*`, `offsets.u.<i>`, `offsets.v.<i>`) with a `conceptkit_encoder` metadata
entry: the encoder's sizes, the backbone it reads, the domain's class word, its pre-training steps, and the
family and fingerprint of the base model it was trained on (an encoder only fits that model).

Concept: the tuned offsets as weight deltas (`delta.unet.*`, applied in place: free at sampling), the tuned
encoder, the image's features and the class word's vectors under `group.e4t.*`, and the step-averaged e* as
the trigger's plain vector (`embedding.0.te<i>`), which textual-inversion exports and samplers without the
encoder use.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ...errors import InputError, ModelLoadError
from ...files import write_safetensors
from ...model import Model, encode_prompts, patches_in_effect
from ...model.image_features import ImageBackbone
from ...model.loading import EMBEDDED_DIR
from ...safetensors_io import check_finite, load_safetensors, read_safetensors_metadata
from .encoder import (
    AttentionOffsets,
    ConceptEncoder,
    EncoderSpec,
    attention_projection_names,
    empty_prompt_features,
    placeholder_vectors,
    unet_feature_size,
)

log = logging.getLogger("conceptkit.concept_encoder")

GROUP = "e4t"
METADATA_KEY = "conceptkit_encoder"
FORMAT_VERSION = 1
EMBEDDED_ENCODER = EMBEDDED_DIR / "creature_encoder.safetensors"  # the world's creature encoder
AVERAGE_STEPS = 25  # the sampling schedule e* is averaged over for the plain vector (the samplers' default)


@dataclass
class Pretrained:
    """A domain encoder with its attention offsets, and what it was made for."""

    encoder: ConceptEncoder
    offsets: AttentionOffsets
    class_word: str
    backbone: str
    family: str
    base_fingerprint: str
    steps: int
    offset_rank: int = 1

    @staticmethod
    def fresh(model: Model, backbone: ImageBackbone, class_word: str, *, hidden: int = 256, offset_rank: int = 1,
              seed: int = 0) -> Pretrained:
        """An untrained encoder for `model` reading `backbone` (offsets start at zero: the base model)."""
        spec = EncoderSpec(backbone.channels, backbone.spatial, unet_feature_size(model),
                           tuple(te.get_input_embeddings().weight.shape[1] for te in model.text_encoders), hidden)
        with torch.random.fork_rng(devices=[]):  # seeded initialization, the caller's random state untouched
            torch.manual_seed(seed)
            encoder = ConceptEncoder(spec).to(model.device)
        return Pretrained(encoder, AttentionOffsets(model, offset_rank, seed).to(model.device), class_word,
                          backbone.name, model.family, model.fingerprint(), 0, offset_rank)

    def description(self) -> dict:
        return {"spec": {**asdict(self.encoder.spec), "token_dims": list(self.encoder.spec.token_dims)},
                "offset_names": list(self.offsets.names), "offset_rank": self.offset_rank,
                "class_word": self.class_word, "backbone": self.backbone, "family": self.family,
                "base_fingerprint": self.base_fingerprint, "steps": self.steps}

    def check_fits(self, model: Model, backbone: ImageBackbone | None = None) -> None:
        if self.family != model.family:
            raise InputError(f"this Concept Encoder was trained for {self.family} models; the model is "
                             f"{model.family}. Load an encoder pre-trained on this model (or pre-train one: "
                             "conceptkit pretrain-encoder).")
        if backbone is not None and backbone.name != self.backbone:
            raise InputError(f"this Concept Encoder reads images through '{self.backbone}', not '{backbone.name}'; "
                             "connect the image model it was pre-trained with.")
        if backbone is not None and backbone.channels != self.encoder.spec.image_channels:
            raise InputError(f"this Concept Encoder takes {self.encoder.spec.image_channels} image features; the "
                             f"connected CLIP vision model gives {backbone.channels}. Connect the CLIP vision model "
                             "it was pre-trained with.")
        if attention_projection_names(model) != list(self.offsets.names) \
                or unet_feature_size(model) != self.encoder.spec.unet_features:
            raise InputError("this Concept Encoder was trained on a model with another UNet; load an encoder "
                             "pre-trained on this model.")
        if self.base_fingerprint != model.fingerprint():
            log.warning(
                "the Concept Encoder was pre-trained on another %s model (fingerprint %s, this one %s); using it "
                "anyway.", self.family, self.base_fingerprint, model.fingerprint())


def save_encoder(pretrained: Pretrained, path: Path, if_exists: str = "error") -> Path:
    tensors = {f"encoder.{k}": v.detach().contiguous() for k, v in pretrained.encoder.state_dict().items()}
    tensors |= {f"offsets.{k}": v.detach().contiguous() for k, v in pretrained.offsets.state_dict().items()}
    info = {"format_version": FORMAT_VERSION, **pretrained.description()}
    return write_safetensors(Path(path), tensors, {METADATA_KEY: json.dumps(info)}, if_exists)


def _spec(info: dict) -> EncoderSpec:
    spec = dict(info["spec"])
    spec["token_dims"] = tuple(spec["token_dims"])
    return EncoderSpec(**spec)


def encoder_from(info: dict, tensors: dict[str, torch.Tensor], prefix: str = "encoder.") -> ConceptEncoder:
    with torch.device("meta"):  # no random initialization: every weight comes from the file
        encoder = ConceptEncoder(_spec(info))
    try:
        encoder.load_state_dict({k[len(prefix):]: v.clone() for k, v in tensors.items() if k.startswith(prefix)},
                                assign=True)
    except RuntimeError as e:
        raise ModelLoadError(f"the encoder's weights do not match its description ({str(e).splitlines()[0]}); the "
                             "file is damaged.") from None
    return encoder.eval().requires_grad_(False)


def load_encoder(path: Path, model: Model) -> Pretrained:
    """An encoder file for `model` (refused with the fix when it was made for another model family)."""
    path = Path(path)
    if path == EMBEDDED_ENCODER and not path.is_file():
        raise ModelLoadError("the embedded creature encoder is missing from this install (world_model/"
                             "creature_encoder.safetensors); reinstall ConceptKit, or pre-train one with "
                             "`conceptkit pretrain-encoder`.")
    metadata = read_safetensors_metadata(path)
    if METADATA_KEY not in metadata:
        raise ModelLoadError(f"{path.name}: not a ConceptKit Concept Encoder file (no '{METADATA_KEY}' metadata).")
    try:
        info = json.loads(metadata[METADATA_KEY])
        if int(info["format_version"]) > FORMAT_VERSION:
            raise ModelLoadError(f"{path.name}: written by a newer ConceptKit; update ConceptKit.")
        if info["family"] != model.family:
            raise InputError(f"{path.name} is a Concept Encoder for {info['family']} models; the model is "
                             f"{model.family}. Load an encoder pre-trained on a {model.family} model, or pre-train "
                             "one (conceptkit pretrain-encoder).")
        tensors = check_finite(load_safetensors(path), path, "pre-train it again, or load another encoder")
        offsets = AttentionOffsets(model, int(info["offset_rank"]))
        if list(offsets.names) != list(info["offset_names"]):
            raise InputError(f"{path.name} was pre-trained on a model with another UNet; load an encoder pre-trained "
                             "on this model.")
        offsets.load_state_dict({k[len("offsets."):]: v for k, v in tensors.items() if k.startswith("offsets.")})
        pretrained = Pretrained(encoder_from(info, tensors), offsets, info["class_word"], info["backbone"],
                                info["family"], info["base_fingerprint"], int(info["steps"]), int(info["offset_rank"]))
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise ModelLoadError(f"{path.name}: the encoder file is damaged ({str(e).splitlines()[0]}); export it "
                             "again.") from None
    pretrained.check_fits(model)
    pretrained.encoder.to(model.device)
    pretrained.offsets.to(model.device)
    return pretrained


# --- what a concept holds -------------------------------------------------------------------------------------

def concept_group_tensors(encoder: ConceptEncoder, deltas: dict[str, torch.Tensor], image_features: torch.Tensor,
                          class_vectors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """A concept's tensors but its trigger's vector: the weight deltas (`unet.<module>.weight` -> offset), the
    encoder, the image's features and the class word's vectors."""
    tensors = {f"delta.{name}": delta.detach().clone() for name, delta in deltas.items()}
    tensors |= {f"group.{GROUP}.encoder.{k}": v.detach().clone() for k, v in encoder.state_dict().items()}
    tensors[f"group.{GROUP}.image_features"] = image_features.detach().float().cpu().clone()
    tensors |= {f"group.{GROUP}.class.te{i}": v.detach().float().cpu().clone() for i, v in enumerate(class_vectors)}
    return tensors


@dataclass(frozen=True)
class _WeightDeltas:
    """The concept's weight deltas as a patch (in place, restored exactly), for reading e* as sampling will."""

    deltas: dict
    triggers: tuple[str, ...] = ()

    def enter(self, model: Model, state) -> None:
        for name, delta in self.deltas.items():
            state.add_offset(name, delta, 1.0)


def step_averaged_vectors(model: Model, encoder: ConceptEncoder, deltas: dict[str, torch.Tensor],
                          image_features: torch.Tensor, class_vectors: list[torch.Tensor],
                          image: torch.Tensor, steps: int = AVERAGE_STEPS) -> list[torch.Tensor]:
    """e* averaged over a sampling schedule's timesteps, with x_t the image's own latent noised to each (a fixed
    seed) and the concept's weight deltas in effect: one plain vector per text encoder, what a textual-inversion
    export of the concept holds."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.scheduler_config)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.to(model.device)
    with torch.no_grad():
        latents = model.vae.encode(image.to(model.device, model.vae.dtype)).latent_dist.mean
        latents = (latents * model.vae.config.scaling_factor).to(model.dtype).expand(len(timesteps), -1, -1, -1)
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0)).to(latents)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        empty = encode_prompts(model, [""] * len(timesteps))
        with patches_in_effect(replace(model, patches=(_WeightDeltas(deltas),))):
            unet_features = empty_prompt_features(model, noisy, timesteps, empty)
        features = image_features.to(model.device).expand(len(timesteps), *image_features.shape[1:])
        vectors = placeholder_vectors(encoder(features, unet_features), class_vectors, encoder.spec.scale)
    return [v.mean(0).float().cpu() for v in vectors]
