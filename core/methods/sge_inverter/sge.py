"""An SGE set: the sample-wise guidance embeddings of N target images (METHODS.md §2), and its file.

`G[i, k]` is latent-shaped, one per target image i and per segment k of the guidance window (noisiest
first). Inside the window the guided prediction is `eps_hat = eps(x_t, c) - sqrt(1 - abar_t) * s * G[i, k]`.
File: safetensors (`sge` [N, K, C, h, w], `targets` [N, C, h, w]: the targets' latents, where generation starts)
with a `conceptkit_sge` metadata entry: the window, scale, steps, prompt, guidance scale, the base model's
family and fingerprint, how it was made.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ...errors import InputError, ModelLoadError
from ...files import safe_file_name, write_safetensors
from ...model import Model
from ...safetensors_io import load_safetensors, read_safetensors_metadata
from .window import Window

METADATA_KEY = "conceptkit_sge"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"


@dataclass
class SGESet:
    sge: torch.Tensor  # [N, K, C, h, w]
    targets: torch.Tensor  # [N, C, h, w]: the targets' latents (scaled as the UNet sees them)
    window: Window
    scale: float  # s
    prompt: str  # c: the empty prompt or a class prompt
    cfg: float  # the guidance scale eps(x_t, c) is taken at (1: the conditional pass only)
    family: str
    base_fingerprint: str
    prediction_type: str = "epsilon"
    parameters: dict = field(default_factory=dict)  # epochs, lr, lambda, mapping, seed, images

    def __post_init__(self):
        if self.sge.ndim != 5 or self.targets.ndim != 4 or len(self.targets) == 0:
            raise InputError(f"the SGE set holds no images (embeddings {tuple(self.sge.shape)}, targets "
                             f"{tuple(self.targets.shape)}); invert at least one image with SGE Inverter.")
        broken = [name for name, t in (("embeddings", self.sge), ("targets", self.targets))
                  if not torch.isfinite(t).all()] + [name for name, v in (("scale", self.scale), ("cfg", self.cfg))
                                                     if not math.isfinite(v)]
        if broken:
            raise InputError(f"the SGE set's {broken[0]} hold values that are not numbers (NaN or infinity); it is "
                             "damaged: invert the images again.")
        if self.sge.shape[:2] != (len(self.targets), self.window.segments):
            raise InputError(f"the SGE set holds {tuple(self.sge.shape[:2])} embeddings for {len(self.targets)} "
                             f"targets and {self.window.segments} segments; the file is damaged.")

    @property
    def count(self) -> int:
        return len(self.targets)

    def check_fits(self, model: Model) -> None:
        if self.family != model.family or tuple(self.targets.shape[1:]) != (
                model.latent_channels, model.default_size // model.vae_scale_factor,
                model.default_size // model.vae_scale_factor):
            raise InputError(f"this SGE set was inverted on a {self.family} model with latents "
                             f"{tuple(self.targets.shape[1:])}; the model is {model.family}. Invert the images again "
                             "on this model.")
        if self.base_fingerprint != model.fingerprint():
            raise InputError(f"this SGE set was inverted on another {self.family} model (fingerprint "
                             f"{self.base_fingerprint}, this one {model.fingerprint()}); its embeddings only fit that "
                             "model. Invert the images again on this one.")

    def metadata(self) -> dict[str, str]:
        info = {"format_version": FORMAT_VERSION, "window": asdict(self.window), "scale": self.scale,
                "prompt": self.prompt, "cfg": self.cfg, "family": self.family,
                "base_fingerprint": self.base_fingerprint, "prediction_type": self.prediction_type,
                "parameters": self.parameters}
        return {METADATA_KEY: json.dumps(info)}


def sge_path(folder: Path, name: str) -> Path:
    name = safe_file_name(name, "SGE set name")
    return Path(folder) / (name if name.endswith(SUFFIX) else name + SUFFIX)


def save_sge(sge: SGESet, path: Path, if_exists: str = "error") -> Path:
    tensors = {"sge": sge.sge.detach().float().contiguous(), "targets": sge.targets.detach().float().contiguous()}
    return write_safetensors(Path(path), tensors, sge.metadata(), if_exists)


def load_sge(path: Path) -> SGESet:
    path = Path(path)
    metadata = read_safetensors_metadata(path)
    if METADATA_KEY not in metadata:
        raise ModelLoadError(f"{path.name}: not a ConceptKit SGE set (no '{METADATA_KEY}' metadata).")
    try:
        info = json.loads(metadata[METADATA_KEY])
        if int(info["format_version"]) > FORMAT_VERSION:
            raise ModelLoadError(f"{path.name}: written by a newer ConceptKit; update ConceptKit.")
        tensors = load_safetensors(path)
        return SGESet(tensors["sge"], tensors["targets"], Window(**info["window"]), float(info["scale"]),
                      str(info["prompt"]), float(info["cfg"]), info["family"], info["base_fingerprint"],
                      info.get("prediction_type", "epsilon"), dict(info.get("parameters") or {}))
    except (KeyError, ValueError, TypeError) as e:
        raise ModelLoadError(f"{path.name}: the SGE set is damaged ({e}); invert the images again.") from None
