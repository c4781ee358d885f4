"""What a training run changes: the trigger token's vector, LoRA adapters (peft), attention weights, or
the full UNet (optionally the text encoder too). A TrainableSet owns its parameters, the offsets
from the base weights (what a parameter-offset penalty bounds), the concept tensors it produces, the
model as it was before the run (`disabled()`: a teacher), and putting the model back exactly as it was.
A method with a trainable set of its own (E4T's encoder) subclasses TrainableSet and gives it to its run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..model import Model
from ..model.patches import canonical_name

UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
ADAPTER = "default"


@dataclass
class LowRankOffset:
    """delta = up @ down * scale, without forming it where that can be avoided."""

    down: torch.Tensor  # [r, in]
    up: torch.Tensor  # [out, r]
    scale: float

    def frobenius_sq(self) -> torch.Tensor:  # ||up down||^2 = sum((up^T up) * (down down^T))
        return (self.up.T @ self.up * (self.down @ self.down.T)).sum() * self.scale**2

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.up @ (self.down @ v) * self.scale

    def rmatvec(self, u: torch.Tensor) -> torch.Tensor:
        return self.down.T @ (self.up.T @ u) * self.scale

    @property
    def in_features(self) -> int:
        return self.down.shape[1]

    @property
    def reference(self) -> torch.Tensor:
        return self.down


@dataclass
class DenseOffset:
    delta: torch.Tensor  # any shape; read as [out, rest] (conv kernels flattened)

    def _matrix(self) -> torch.Tensor:
        return self.delta.reshape(self.delta.shape[0], -1)

    def frobenius_sq(self) -> torch.Tensor:
        return self.delta.pow(2).sum()

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._matrix() @ v

    def rmatvec(self, u: torch.Tensor) -> torch.Tensor:
        return self._matrix().T @ u

    @property
    def in_features(self) -> int:
        return self._matrix().shape[1]

    @property
    def reference(self) -> torch.Tensor:
        return self.delta


def _target_names(root: torch.nn.Module, suffixes: tuple[str, ...]) -> list[str]:
    return [n for n, m in root.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(suffixes)]


class TrainableSet:
    """Base: the trigger token's vectors (one per text encoder), trained only where `train_token`."""

    kind = "embedding"

    def __init__(self, model: Model, token_init: list[torch.Tensor], train_token: bool, train_text_encoder: bool):
        self.model = model
        self.token = [torch.nn.Parameter(v.detach().clone().float(), requires_grad=train_token) for v in token_init]
        self.companion_tokens: list[list[torch.nn.Parameter]] = []  # the run's other triggers (TrainConfig.companions)
        self._token_starts: list[torch.Tensor] = [p.detach().clone() for p in self.token]
        self.train_text_encoder = train_text_encoder

    def add_companions(self, token_inits: list[list[torch.Tensor]]) -> None:
        """Vectors for the run's other triggers, one list per trigger, trained where the run's own trains."""
        self.companion_tokens = [[torch.nn.Parameter(v.detach().clone().float(),
                                                     requires_grad=self.token[i].requires_grad)
                                  for i, v in enumerate(vectors)] for vectors in token_inits]
        self._token_starts += [p.detach().clone() for vectors in self.companion_tokens for p in vectors]

    def parts(self) -> list[tuple[str, torch.nn.Module]]:
        """('unet' | 'te<i>', module) for each module whose weights this set may change."""
        parts = [("unet", self.model.unet)] if self.kind != "embedding" else []
        if self.train_text_encoder and self.kind != "embedding":
            parts += [(f"te{i}", te) for i, te in enumerate(self.model.text_encoders)]
        return parts

    def weight_parameters(self) -> list[torch.nn.Parameter]:
        return []

    def modules(self) -> list[torch.nn.Module]:
        """Modules the set owns beside the model's (an encoder): trained, and wrapped for DDP with the step."""
        return []

    def token_parameters(self) -> list[torch.nn.Parameter]:
        return [p for vectors in self.trigger_tokens() for p in vectors if p.requires_grad]

    def trigger_tokens(self) -> list[list[torch.nn.Parameter]]:
        """Every trigger's vectors, the run's own first, then its companions'."""
        return [self.token, *self.companion_tokens]

    def offsets(self) -> dict[str, LowRankOffset | DenseOffset]:
        """name -> offset from the base weights, with gradients (token vectors excluded: they have no base)."""
        return {}

    def concept_tensors(self) -> dict[str, torch.Tensor]:
        return {f"embedding.{k}.te{i}": p.detach().clone()[None]
                for k, vectors in enumerate(self.trigger_tokens()) for i, p in enumerate(vectors)}

    def state(self) -> dict[str, torch.nn.Parameter]:
        """Everything a checkpoint must hold to resume (the same Parameter objects, restored in place)."""
        return {f"token{k or ''}.{i}": p
                for k, vectors in enumerate(self.trigger_tokens()) for i, p in enumerate(vectors)}

    def restore(self) -> None:
        """Put the model back exactly as it was before training."""

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """The model as it was before the run, for the block (a teacher's passes; no gradients): the weights as
        they were, and the trigger vectors at their starting values (a teacher does not follow the training)."""
        tokens = [p for vectors in self.trigger_tokens() for p in vectors]
        trained = [p.data for p in tokens]
        try:
            for p, start in zip(tokens, self._token_starts, strict=True):
                p.data = start
            with self._weights_disabled():
                yield
        finally:
            for p, data in zip(tokens, trained, strict=True):
                p.data = data

    @contextmanager
    def _weights_disabled(self) -> Iterator[None]:
        yield


class LoraSet(TrainableSet):
    """peft LoRA adapters of rank r on the attention projections (q, k, v, out)."""

    kind = "lora"

    def __init__(self, model, token_init, train_token, train_text_encoder, rank: int, alpha: float, seed: int):
        from peft import LoraConfig, inject_adapter_in_model

        super().__init__(model, token_init, train_token, train_text_encoder)
        if rank < 1:
            raise InputError(f"LoRA rank must be at least 1 (got {rank}).")
        self.rank, self.alpha = rank, alpha
        with torch.random.fork_rng(devices=[]):  # peft draws lora_A from the global generator: seeded here, the
            torch.manual_seed(seed)  # caller's random state untouched
            for name, part in self.parts():
                suffixes = UNET_ATTENTION if name == "unet" else TEXT_ATTENTION
                config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                    target_modules=_target_names(part, suffixes))
                inject_adapter_in_model(config, part, adapter_name=ADAPTER)
                for pname, param in part.named_parameters():
                    param.requires_grad_("lora_" in pname)

    def _layers(self):
        for part_name, part in self.parts():
            for name, module in part.named_modules():
                if hasattr(module, "lora_A") and ADAPTER in getattr(module, "lora_A", {}):
                    yield canonical_name(part_name, part, name), module

    def weight_parameters(self):
        return [p for _, m in self._layers() for p in (m.lora_A[ADAPTER].weight, m.lora_B[ADAPTER].weight)]

    def offsets(self):
        return {name: LowRankOffset(m.lora_A[ADAPTER].weight, m.lora_B[ADAPTER].weight, m.scaling[ADAPTER])
                for name, m in self._layers()}

    def concept_tensors(self):
        tensors = super().concept_tensors()
        for name, m in self._layers():
            tensors[f"lora.{name}.down"] = m.lora_A[ADAPTER].weight.detach().clone()
            tensors[f"lora.{name}.up"] = m.lora_B[ADAPTER].weight.detach().clone()
        return tensors

    def state(self):
        named = {f"lora.{n}.down": m.lora_A[ADAPTER].weight for n, m in self._layers()}
        named |= {f"lora.{n}.up": m.lora_B[ADAPTER].weight for n, m in self._layers()}
        return {**super().state(), **named}

    @contextmanager
    def _weights_disabled(self):
        layers = [m for _, m in self._layers()]
        try:
            for m in layers:
                m._disable_adapters = True
            yield
        finally:
            for m in layers:
                m._disable_adapters = False

    def restore(self):
        from diffusers.utils import recurse_remove_peft_layers

        for _, part in self.parts():
            recurse_remove_peft_layers(part)
            for attribute in ("peft_config", "_hf_peft_config_loaded"):
                if attribute in part.__dict__:
                    delattr(part, attribute)
            part.requires_grad_(False)


class DeltaSet(TrainableSet):
    """Full weights trained in place ('attention': the attention projections; 'full': every UNet weight);
    the base values are kept to compute offsets and to restore the model."""

    def __init__(self, model, token_init, train_token, train_text_encoder, kind: str):
        self.kind = kind
        super().__init__(model, token_init, train_token, train_text_encoder)
        self.params: dict[str, torch.nn.Parameter] = {}
        for part_name, part in self.parts():
            part.requires_grad_(False)
            suffixes = UNET_ATTENTION if part_name == "unet" else TEXT_ATTENTION
            attention = {f"{n}.weight" for n in _target_names(part, suffixes)}
            for name, param in part.named_parameters():
                skip_embedding = part_name != "unet" and "embeddings" in name
                if (kind == "full" and not skip_embedding) or name in attention:
                    self.params[canonical_name(part_name, part, name)] = param
        self.base = {name: p.detach().clone() for name, p in self.params.items()}
        for p in self.params.values():
            p.requires_grad_(True)

    def weight_parameters(self):
        return list(self.params.values())

    def offsets(self):
        return {name: DenseOffset(p - self.base[name]) for name, p in self.params.items()}

    def concept_tensors(self):
        tensors = super().concept_tensors()
        tensors |= {f"delta.{name}": (p.detach() - self.base[name]).clone() for name, p in self.params.items()}
        return tensors

    def state(self):
        return {**super().state(), **{f"delta.{n}": p for n, p in self.params.items()}}

    @contextmanager
    def _weights_disabled(self):
        trained = {name: p.data for name, p in self.params.items()}
        try:
            for name, p in self.params.items():
                p.data = self.base[name]
            yield
        finally:
            for name, p in self.params.items():
                p.data = trained[name]

    def restore(self):
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(self.base[name])
                param.requires_grad_(False)


Builder = Callable[..., TrainableSet]  # (model, token_init, *, train_token, train_text_encoder, rank, alpha, seed)
TRAINABLES: dict[str, Builder] = {
    "embedding": lambda model, token_init, **_: TrainableSet(model, token_init, True, False),
    "lora": lambda model, token_init, *, train_token, train_text_encoder, rank, alpha, seed: LoraSet(
        model, token_init, train_token, train_text_encoder, rank, alpha, seed),
    "attention": lambda model, token_init, *, train_token, train_text_encoder, **_: DeltaSet(
        model, token_init, train_token, train_text_encoder, "attention"),
    "full": lambda model, token_init, *, train_token, train_text_encoder, **_: DeltaSet(
        model, token_init, train_token, train_text_encoder, "full"),
}


def trainable_kinds() -> tuple[str, ...]:
    return tuple(TRAINABLES)


def build_trainable(model: Model, kind: str, token_init: list[torch.Tensor], *, train_token: bool,
                    train_text_encoder: bool, rank: int, alpha: float, seed: int,
                    companion_inits: list[list[torch.Tensor]] = ()) -> TrainableSet:
    if kind not in TRAINABLES:
        raise InputError(f"trainable '{kind}' is not one of {', '.join(TRAINABLES)}.")
    trainable = TRAINABLES[kind](model, token_init, train_token=train_token, train_text_encoder=train_text_encoder,
                                 rank=rank, alpha=alpha, seed=seed)
    trainable.add_companions(list(companion_inits))
    return trainable
