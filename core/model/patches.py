"""Patching a model without copying it: added trigger tokens, LoRA hooks and weight offsets.

A `Patch` (an applied concept, a trainer's trigger token, ...) travels with the `Model` it patches
(`add_patch` returns a new Model that shares every module with the base). Nothing is modified until
a sampler or trainer enters `patches_in_effect(model)`, which, for the duration of the block only:
- serves added tokens' vectors from a small table beside each text encoder's own (no resized copy).
  A vector is `[dim]`, or `[B, dim]`: one per prompt of the batch (a per-sample row);
- adds LoRA deltas through forward hooks, whose `scale` can be switched between passes at no cost
  (one number, or one per sample); or, for a block that never switches them (a training run over concepts the
  model carries), folds them into the weights, so that a layer costs the same whatever the concepts hold;
- adds full weight offsets in place and restores the exact original weights afterwards;
and yields the `PatchState`: what the patches changed, for extensions that need it (weak-model guidance).
A patch whose token vectors depend on the current latents (an image encoder's) adds a `StepHook`: the
sampling loop calls it before each step and encodes the prompt again with the vectors it served.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..errors import InputError
from .model import Model

TEXT_MODEL = "text_model."  # CLIP text encoders' own prefix; some transformers versions drop the wrapper


# --- names of modules and parameters -------------------------------------------------------------------------

def named_part(model: Model, name: str) -> tuple[torch.nn.Module, str]:
    """'unet.<path>' or 'te<i>.<path>' -> (module root, path)."""
    root, _, path = name.partition(".")
    if root == "unet":
        return model.unet, path
    if root.startswith("te") and root[2:].isdigit() and int(root[2:]) < len(model.text_encoders):
        return model.text_encoders[int(root[2:])], path
    raise InputError(f"the concept names a part '{root}' this model does not have.")


def canonical_name(root_name: str, root: torch.nn.Module, path: str) -> str:
    """The stable name of a module or parameter: text-encoder paths always start with 'text_model.', whichever
    transformers version built the encoder, so concept files move between versions."""
    if root_name.startswith("te") and not hasattr(root, "text_model") and not path.startswith(TEXT_MODEL):
        path = TEXT_MODEL + path
    return f"{root_name}.{path}"


def _local_path(root: torch.nn.Module, path: str) -> str:
    if path.startswith(TEXT_MODEL) and not hasattr(root, "text_model"):
        return path[len(TEXT_MODEL):]
    return path


def _find(model: Model, name: str, getter: str):
    root, path = named_part(model, name)
    try:
        return getattr(root, getter)(_local_path(root, path))
    except AttributeError:
        raise InputError(f"the concept changes '{name}', which this model does not have; it was made for "
                         "another model.") from None


def find_module(model: Model, name: str) -> torch.nn.Module:
    return _find(model, name, "get_submodule")


def find_parameter(model: Model, name: str) -> torch.nn.Parameter:
    return _find(model, name, "get_parameter")


# --- trigger tokens --------------------------------------------------------------------------------------------

TRIGGER_PUNCTUATION = set("<>-_")


def trigger_problem(trigger: str) -> str | None:
    """Why `trigger` cannot be a trigger word (None when it can): one word of letters and digits, optionally
    wrapped or joined with < > - _ (a comma or a space would take over parts of ordinary prompts)."""
    if not trigger or not any(c.isalnum() for c in trigger):
        return f"the trigger '{trigger}' has no letters; use a new word such as '<my-dog>'."
    odd = sorted({c for c in trigger if not (c.isalnum() or c in TRIGGER_PUNCTUATION)})
    if odd:
        return (f"the trigger '{trigger}' contains {' '.join(repr(c) for c in odd)}; use one word of letters, digits "
                "and < > - _ that is new to the model, such as '<my-dog>'.")
    return None


def trigger_is_new(tokenizer, trigger: str) -> bool:
    """True when `trigger` is not already one token of the vocabulary (or an added token)."""
    vocab = tokenizer.get_vocab()
    return trigger not in vocab and f"{trigger.lower()}</w>" not in vocab


def with_trigger_token(tokenizer, trigger: str):
    """A copy of `tokenizer` in which `trigger` is one (added) token."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_tokens([trigger])
    return tokenizer


def class_word_vector(model: Model, encoder: int, class_word: str) -> torch.Tensor | None:
    """The class word's vector in text encoder `encoder` (float32, the mean over the word's tokens): where a
    trigger token starts training and its pre-trained value. None without a class word."""
    ids = model.tokenizers[encoder](class_word, add_special_tokens=False).input_ids if class_word.strip() else []
    if not ids:
        return None
    return model.text_encoders[encoder].get_input_embeddings().weight.detach()[ids].float().mean(0)


class ExtendedEmbedding(torch.nn.Module):
    """A token table = the encoder's own table + extra rows for added tokens (ids past its end). The rows
    are stacked at each call, so trainable rows (textual inversion) get their gradients. A row of shape
    [B, dim] gives prompt b of the batch its own vector."""

    def __init__(self, base: torch.nn.Embedding, rows: list[torch.Tensor]):
        super().__init__()
        self.base, self.rows = base, rows
        self.num_embeddings = base.num_embeddings + len(rows)

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.base.weight, torch.stack([r if r.dim() == 1 else r[0] for r in self.rows])
                          .to(self.base.weight)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        base_n = self.base.num_embeddings
        out = self.base(ids.clamp(max=base_n - 1))
        added = ids >= base_n
        if not added.any():
            return out
        index = (ids - base_n).clamp(min=0, max=len(self.rows) - 1)
        if all(r.dim() == 1 for r in self.rows):
            extra = torch.stack(self.rows).to(out)
            return torch.where(added[..., None], extra[index], out)
        batch = ids.shape[0]
        for r in self.rows:
            if r.dim() == 2 and r.shape[0] != batch:
                raise InputError(f"a per-sample token vector has {r.shape[0]} rows for a batch of {batch} prompts; "
                                 "give one row per prompt.")
        extra = torch.stack([r.expand(batch, -1) if r.dim() == 1 else r for r in self.rows]).to(out)  # [R, B, dim]
        return torch.where(added[..., None], extra[index, torch.arange(batch, device=ids.device)[:, None]], out)


# --- what the patches changed -------------------------------------------------------------------------------

class LoraHook:
    """output += scale * factor * up(down(x)) on one Linear module, as peft's LoRA layer computes it.
    `scale` (1 = as applied, 0 = off) is a number, or one value per sample of the batch."""

    def __init__(self, module: torch.nn.Module, down: torch.Tensor, up: torch.Tensor, factor: float, text: bool):
        weight = module.weight
        self.down, self.up = down.to(weight), up.to(weight)
        self.factor = factor
        self.text = text
        self.scale: float | torch.Tensor = 1.0
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        scale = self.scale
        if isinstance(scale, torch.Tensor):
            if scale.shape[0] != output.shape[0]:
                raise InputError(f"{scale.shape[0]} LoRA scales were given for a batch of {output.shape[0]}.")
            scale = scale.reshape(-1, *[1] * (output.dim() - 1))
        elif scale == 0.0:
            return output
        x = inputs[0]
        down, up = self.down, self.up
        if down.is_inference() and torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            down, up = down.clone(), up.clone()  # made under ComfyUI's inference mode; a gradient pass needs copies
        return output + (x @ down.T @ up.T) * (self.factor * scale)


@dataclass
class ChangedWeight:
    """One parameter changed in place: `pre` is its value before the patch, `tuned` the tensor it holds now."""

    param: torch.nn.Parameter
    pre: torch.Tensor
    tuned: torch.Tensor
    text: bool  # a text-encoder weight


@dataclass
class TokenRow:
    """One added token's vector in a text encoder's extended table (`rows[index]`), with its pre-trained value
    (the class word's vector, where training starts)."""

    rows: list[torch.Tensor]
    index: int
    pre: torch.Tensor
    tuned: torch.Tensor
    trigger: str = ""


class StepHook(Protocol):
    """Changes a patch's token vectors before each sampling step, from the current latents."""

    def before_step(self, step, latents: torch.Tensor, uncond, denoise) -> None:
        """`step`: the sampling Step; `latents`: the scaled model input of the step; `uncond`: the step's
        unconditional Conditioning; `denoise(x, t, cond)`: one UNet evaluation, if the hook needs its own."""


@dataclass
class PatchState:
    """What the patches in effect changed; patches add to it with the add_* methods."""

    model: Model
    lora_hooks: list[LoraHook] = field(default_factory=list)
    weights: list[ChangedWeight] = field(default_factory=list)
    tokens: list[TokenRow] = field(default_factory=list)
    step_hooks: list[StepHook] = field(default_factory=list)
    attention: list = field(default_factory=list)  # attention controllers (the sampling loop's AttentionController)
    fold_lora: bool = False  # LoRA deltas added to the weights in place (restored exactly), not through hooks
    _vectors: list[dict[int, tuple[torch.Tensor, torch.Tensor, str]]] = field(default_factory=list)
    _stack: ExitStack = field(default_factory=ExitStack)

    def add_token(self, trigger: str, vectors: Sequence[torch.Tensor], pre: Sequence[torch.Tensor | None]) -> None:
        """Serve `vectors[i]` ([dim] or [B, dim]) for `trigger` in text encoder i; `pre[i]` is its pre-trained
        value (None: the vector itself)."""
        if not self._vectors:
            self._vectors = [{} for _ in self.model.text_encoders]
        for i, (tokenizer, vector) in enumerate(zip(self.model.tokenizers, vectors, strict=False)):
            token_id = tokenizer.convert_tokens_to_ids(trigger)
            self._vectors[i][token_id] = (vector, vector if pre[i] is None else pre[i], trigger)

    def add_step_hook(self, hook: StepHook) -> None:
        self.step_hooks.append(hook)

    def add_attention(self, controller) -> None:
        """An attention controller for the sampling runs while the patch is in effect (a memory's artist)."""
        self.attention.append(controller)

    def on_exit(self, callback, *args) -> None:
        """Run `callback(*args)` when the patches stop being in effect (remove a hook, restore a value)."""
        self._stack.callback(callback, *args)

    def token_rows(self, trigger: str) -> list[TokenRow]:
        """`trigger`'s rows, one per text encoder."""
        rows = [row for row in self.tokens if row.trigger == trigger]
        if not rows:
            raise InputError(f"the trigger '{trigger}' is not a token of the patches in effect.")
        return rows

    def set_token(self, trigger: str, vectors: Sequence[torch.Tensor]) -> None:
        """Serve `vectors[i]` ([dim], or [B, dim]: one per prompt of the batch) for `trigger` in text encoder i
        from now on (its new tuned value)."""
        for row, vector in zip(self.token_rows(trigger), vectors, strict=True):
            row.rows[row.index] = row.tuned = vector

    @contextmanager
    def serving(self, trigger: str, vectors: Sequence[torch.Tensor]) -> Iterator[None]:
        """Serve `vectors` for `trigger` for the block only (an encoder's per-sample vectors while training)."""
        rows = self.token_rows(trigger)
        before = [row.rows[row.index] for row in rows]
        try:
            for row, vector in zip(rows, vectors, strict=True):
                row.rows[row.index] = vector
            yield
        finally:
            for row, vector in zip(rows, before, strict=True):
                row.rows[row.index] = vector

    def add_lora(self, name: str, down: torch.Tensor, up: torch.Tensor, factor: float) -> None:
        module = find_module(self.model, name)
        out_features, in_features = module.weight.shape[:2]
        if down.dim() != 2 or up.dim() != 2 or down.shape[1] != in_features or up.shape[0] != out_features \
                or up.shape[1] != down.shape[0]:
            raise InputError(f"the concept's LoRA for '{name}' has shapes {tuple(down.shape)} and {tuple(up.shape)}, "
                             f"which do not fit the model's layer ({out_features}x{in_features}); it was made for "
                             "another model, or the file is damaged.")
        if self.fold_lora:
            weight = module.weight
            self._change(weight, up.to(weight) @ down.to(weight), factor, name)
            return
        hook = LoraHook(module, down, up, factor, text=not name.startswith("unet."))
        self._stack.callback(hook.handle.remove)
        self.lora_hooks.append(hook)

    def add_offset(self, name: str, delta: torch.Tensor, strength: float) -> None:
        """param += strength * delta, restored exactly when the block ends."""
        param = find_parameter(self.model, name)
        if param.shape != delta.shape:
            raise InputError(f"the concept's offset for '{name}' has shape {tuple(delta.shape)}, the model's "
                             f"weight {tuple(param.shape)}; it was made for a different model.")
        self._change(param, delta.to(param), strength, name)

    def _change(self, param: torch.nn.Parameter, delta: torch.Tensor, alpha: float, name: str) -> None:
        with torch.no_grad():
            changed = ChangedWeight(param, param.detach().clone(), param.data, text=not name.startswith("unet."))
            self._stack.callback(_restore, changed)
            param.add_(delta, alpha=alpha)
        self.weights.append(changed)

    def _install_tokens(self) -> None:
        for encoder, table in zip(self.model.text_encoders, self._vectors, strict=False):
            if not table:
                continue
            base = encoder.get_input_embeddings()
            first = base.num_embeddings
            if sorted(table) != list(range(first, first + len(table))):
                raise InputError("added token ids do not follow the vocabulary; add tokens with add_patch.")
            extended = ExtendedEmbedding(base, [table[i][0] for i in sorted(table)])
            encoder.set_input_embeddings(extended)
            self._stack.callback(encoder.set_input_embeddings, base)
            for index, token_id in enumerate(sorted(table)):
                _, pre, trigger = table[token_id]
                self.tokens.append(TokenRow(extended.rows, index, pre.to(extended.rows[index]), extended.rows[index],
                                            trigger))


def _restore(changed: ChangedWeight) -> None:
    with torch.no_grad():
        changed.param.data = changed.tuned
        changed.param.copy_(changed.pre)


class Patch(Protocol):
    """Something that changes a model while it is in effect (an applied concept, a trainer's token, ...)."""

    triggers: tuple[str, ...]  # the new words it adds to the vocabulary, in order

    def enter(self, model: Model, state: PatchState) -> None:
        """Make the change through `state`'s add_* methods (undone when the block ends)."""


def add_patch(model: Model, patch: Patch) -> Model:
    """The model with `patch` (a new Model sharing every module with `model`); its trigger words become tokens."""
    taken = {t for p in model.patches for t in p.triggers}
    for trigger in patch.triggers:
        if problem := trigger_problem(trigger):
            raise InputError(problem)
        if trigger in taken:
            raise InputError(f"the trigger '{trigger}' is already applied to this model; give each concept its own "
                             "trigger word.")
        if not all(trigger_is_new(t, trigger) for t in model.tokenizers):
            raise InputError(f"the trigger '{trigger}' is already a word of this model's vocabulary, so a learned "
                             "vector for it could not be used; choose a new word such as '<my-subject>'.")
    tokenizers = list(model.tokenizers)
    for trigger in patch.triggers:
        tokenizers = [with_trigger_token(t, trigger) for t in tokenizers]
    return dataclasses.replace(model, tokenizers=tokenizers, patches=(*model.patches, patch))


@contextmanager
def patches_in_effect(model: Model, *, fold_lora: bool = False) -> Iterator[PatchState]:
    """The model's patches take effect for the duration of the block; yields what they changed. `fold_lora`:
    LoRA deltas go into the weights (no per-pass scale; the weights are restored exactly afterwards)."""
    state = PatchState(model, fold_lora=fold_lora)
    with state._stack:
        for patch in model.patches:
            patch.enter(model, state)
        state._install_tokens()
        yield state
