"""Applying concepts to a model without copying it.

`apply_concept` returns a new `Model` that shares every module with the base and records the concept;
nothing is modified until a sampler (or trainer) enters `concepts_applied(model)`, which, for the
duration of the block only:
- adds the trigger tokens to a copy of each tokenizer and serves their vectors from a small table
  beside the text encoder's own (no resized copy of the encoder);
- adds LoRA deltas through forward hooks (their `scale` can be switched between passes at no cost);
- adds full weight offsets in place and restores the exact original weights afterwards;
and yields the `WeakModel` that interpolates all of it back toward the base (weak-model guidance).
So the same base model can be used by other nodes at the same time it is used with a concept.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..model import Model
from .concept import Concept
from .weak_model import DenseWeights, TokenRow, WeakModel

log = logging.getLogger("conceptkit.concepts")


@dataclass(frozen=True)
class AppliedConcept:
    concept: Concept
    strength: float = 1.0


def check_concept_fits(model: Model, concept: Concept) -> None:
    if concept.family != model.family:
        raise InputError(
            f"{concept.describe()} cannot be applied to this {model.family} model: concepts only work on the model "
            f"family they were trained for. Load a {concept.family} model, or train the concept again on this one.")
    dims = [te.get_input_embeddings().weight.shape[1] for te in model.text_encoders]
    got = [e.shape[-1] for e in concept.embeddings()]
    if got and got != dims:
        raise InputError(f"{concept.describe()} has token vectors of size {got}, this model's text encoders take "
                         f"{dims}; it was made for a different model.")
    if concept.base_fingerprint != model.fingerprint():
        log.warning("%s was trained on another %s model (fingerprint %s, this one %s); applying it anyway.",
                    concept.describe(), model.family, concept.base_fingerprint, model.fingerprint())


def trigger_is_new(tokenizer, trigger: str) -> bool:
    """True when `trigger` is not already one token of the vocabulary (or an added token)."""
    vocab = tokenizer.get_vocab()
    return trigger not in vocab and f"{trigger.lower()}</w>" not in vocab


def with_trigger_token(tokenizer, trigger: str):
    """A copy of `tokenizer` in which `trigger` is one (added) token."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_tokens([trigger])
    return tokenizer


def apply_concept(model: Model, concept: Concept, strength: float = 1.0) -> Model:
    """The model with `concept` applied at `strength` (1.0 = as trained, 0 = off). The base is untouched."""
    check_concept_fits(model, concept)
    if not torch.isfinite(torch.tensor(strength)):
        raise InputError(f"strength must be a number (got {strength}).")
    if concept.trigger and any(a.concept.trigger == concept.trigger for a in model.concepts):
        raise InputError(f"a concept with trigger '{concept.trigger}' is already applied to this model; "
                         "give each concept its own trigger word.")
    tokenizers = list(model.tokenizers)
    if concept.embeddings():
        if not all(trigger_is_new(t, concept.trigger) for t in model.tokenizers):
            raise InputError(f"the trigger '{concept.trigger}' of {concept.describe()} is already a word of this "
                             "model's vocabulary, so its learned vector could not be used.")
        tokenizers = [with_trigger_token(t, concept.trigger) for t in tokenizers]
    return dataclasses.replace(model, tokenizers=tokenizers,
                               concepts=(*model.concepts, AppliedConcept(concept, float(strength))))


class ExtendedEmbedding(torch.nn.Module):
    """A token table = the encoder's own table + extra rows for added tokens (ids past its end). The rows
    are stacked at each call, so trainable rows (textual inversion) get their gradients."""

    def __init__(self, base: torch.nn.Embedding, rows: list[torch.Tensor]):
        super().__init__()
        self.base, self.rows = base, rows
        self.num_embeddings = base.num_embeddings + len(rows)

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.base.weight, torch.stack(self.rows).to(self.base.weight)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        base_n = self.base.num_embeddings
        out = self.base(ids.clamp(max=base_n - 1))
        added = ids >= base_n
        if not added.any():
            return out
        extra = torch.stack(self.rows).to(out)
        return torch.where(added[..., None], extra[(ids - base_n).clamp(min=0, max=len(self.rows) - 1)], out)


@contextmanager
def token_vectors(model: Model, vectors: list[dict[int, torch.Tensor]]):
    """Serve `vectors[i][token_id]` for added tokens of text encoder i during the block. Yields, per text
    encoder, the list of added rows in token-id order (None where it has none)."""
    swapped, tables = [], []
    try:
        for encoder, table in zip(model.text_encoders, vectors, strict=True):
            if not table:
                tables.append(None)
                continue
            base = encoder.get_input_embeddings()
            first = base.num_embeddings
            if sorted(table) != list(range(first, first + len(table))):
                raise InputError("added token ids do not follow the vocabulary; apply concepts with apply_concept.")
            extended = ExtendedEmbedding(base, [table[i] for i in sorted(table)])
            encoder.set_input_embeddings(extended)
            swapped.append((encoder, base))
            tables.append(extended.rows)
        yield tables
    finally:
        for encoder, base in swapped:
            encoder.set_input_embeddings(base)


class LoraHook:
    """output += scale * strength * up(down(x)) on one Linear module, as peft's LoRA layer computes it.
    `scale` (1 = as applied, 0 = the base model) is a number, or one value per sample of the batch."""

    def __init__(self, module: torch.nn.Module, down: torch.Tensor, up: torch.Tensor, lora_scale: float,
                 strength: float, text: bool):
        weight = module.weight
        self.down, self.up = down.to(weight), up.to(weight)
        self.factor = lora_scale * strength
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
        return output + (x @ self.down.T @ self.up.T) * (self.factor * scale)


TEXT_MODEL = "text_model."  # CLIP text encoders' own prefix; some transformers versions drop the wrapper


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


@contextmanager
def lora_hooks(model: Model, concept: Concept, strength: float):
    hooks = []
    try:
        for name, (down, up) in concept.lora_modules().items():
            hooks.append(LoraHook(find_module(model, name), down, up, concept.lora_scale, strength,
                                  text=not name.startswith("unet.")))
        yield hooks
    finally:
        for hook in hooks:
            hook.handle.remove()


@contextmanager
def weight_offsets(model: Model, deltas: dict[str, torch.Tensor], strength: float):
    """Add `strength * delta` to named parameters; restore the originals exactly afterwards. Yields the
    changed weights (pre-trained and fine-tuned values)."""
    saved = []
    try:
        with torch.no_grad():
            for name, delta in deltas.items():
                param = find_parameter(model, name)
                if param.shape != delta.shape:
                    raise InputError(f"the concept's offset for '{name}' has shape {tuple(delta.shape)}, the model's "
                                     f"weight {tuple(param.shape)}; it was made for a different model.")
                saved.append(DenseWeights(param, param.detach().clone(), param.data, text=not name.startswith("unet.")))
                param.add_(delta.to(param), alpha=strength)
        yield saved
    finally:
        with torch.no_grad():
            for weights in saved:
                weights.param.data = weights.tuned
                weights.param.copy_(weights.pre)


@contextmanager
def concepts_applied(model: Model):
    """Make the model's applied concepts take effect for the duration of the block; yields the `WeakModel`
    that interpolates them back toward the base model."""
    weak = WeakModel()
    if not model.concepts:
        yield weak
        return
    vectors: list[dict[int, torch.Tensor]] = [{} for _ in model.text_encoders]
    pre_vectors: list[dict[int, torch.Tensor]] = [{} for _ in model.text_encoders]
    with ExitStack() as stack:
        for applied in model.concepts:
            concept = applied.concept
            for i, (tokenizer, vector) in enumerate(zip(model.tokenizers, concept.embeddings(), strict=False)):
                token_id = tokenizer.convert_tokens_to_ids(concept.trigger)
                vectors[i][token_id] = vector.reshape(-1)
                start = class_word_vector(model, i, concept.class_word)  # where training starts
                pre_vectors[i][token_id] = vector.reshape(-1) if start is None else start.to(vector)
            weak.lora_hooks += stack.enter_context(lora_hooks(model, concept, applied.strength))
            weak.dense += stack.enter_context(weight_offsets(model, concept.deltas(), applied.strength))
        tables = stack.enter_context(token_vectors(model, vectors))
        for rows, table, pre in zip(tables, vectors, pre_vectors, strict=True):
            for index, token_id in enumerate(sorted(table)):
                start = pre[token_id].to(rows[index])
                if not torch.equal(start, rows[index]):  # an untrained token (LoRA, full) has nothing to unlearn
                    weak.tokens.append(TokenRow(rows, index, start, rows[index]))
        yield weak


def class_word_vector(model: Model, encoder: int, class_word: str) -> torch.Tensor | None:
    """The class word's vector in text encoder `encoder` (float32, the mean over the word's tokens): where a
    trigger token starts training and, for weak-model guidance, its pre-trained value. None without a class word."""
    ids = model.tokenizers[encoder](class_word, add_special_tokens=False).input_ids if class_word.strip() else []
    if not ids:
        return None
    return model.text_encoders[encoder].get_input_embeddings().weight.detach()[ids].float().mean(0)
