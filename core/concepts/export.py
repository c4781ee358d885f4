"""Concepts in the formats the ecosystem loads natively, and back.

- kohya LoRA (`lora_unet_...` / `lora_te_...` keys with `.lora_down.weight`, `.lora_up.weight`, `.alpha`):
  ComfyUI's LoraLoader, A1111 and diffusers' `load_lora_weights` read it. SD 1.x/2.x (and the world
  model) use kohya's diffusers-style module names; SDXL uses kohya's LDM (sgm) names, as kohya's
  SDXL trainer writes them. Text encoders: `lora_te_` (one encoder), `lora_te1_` / `lora_te2_` (SDXL).
- textual-inversion embedding: `{"emb_params": [n, dim]}` (SD 1.x/2.x), `{"clip_l", "clip_g"}` (SDXL).
- diffusers: a folder with `pytorch_lora_weights.safetensors` (peft keys, `pipe.load_lora_weights`),
  `learned_embeds.safetensors` (`pipe.load_textual_inversion`) and, for full fine-tunes, `unet/`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import InputError, ModelLoadError
from ..files import atomic_folder, safe_file_name, write_safetensors
from ..model import Model, patches_in_effect
from ..model.patches import canonical_name, named_part
from ..safetensors_io import load_safetensors
from .apply import apply_concept, check_concept_fits
from .concept import Concept, Trigger

ATTENTION_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.attentions\.(\d+)\.(.*)$")


def _ldm_unet_name(path: str, layers_per_block: int) -> str | None:
    """A diffusers UNet attention-module path in the LDM (sgm) layout kohya's SDXL LoRAs use (None outside
    the attention blocks)."""
    if path.startswith("mid_block.attentions.0."):
        return "middle_block.1." + path[len("mid_block.attentions.0."):]
    match = ATTENTION_BLOCK.match(path)
    if not match:
        return None
    kind, block, index, rest = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
    if kind == "down_blocks":
        return f"input_blocks.{1 + block * (layers_per_block + 1) + index}.1.{rest}"
    return f"output_blocks.{block * (layers_per_block + 1) + index}.1.{rest}"


def kohya_module_name(model: Model, name: str) -> str:
    """'unet.<path>' / 'te<i>.<path>' -> kohya's key stem for this model's family."""
    root, _, path = name.partition(".")
    if root == "unet":
        if model.is_sdxl:
            ldm = _ldm_unet_name(path, model.unet.config.layers_per_block)
            if ldm is None:
                raise InputError(f"'{path}' is outside the attention blocks; SDXL kohya LoRAs cover those only.")
            path = ldm
        return "lora_unet_" + path.replace(".", "_")
    index = int(root[2:])
    prefix = f"lora_te{index + 1}_" if len(model.text_encoders) > 1 else "lora_te_"
    return prefix + path.replace(".", "_")


def to_kohya_lora(concept: Concept, model: Model) -> dict[str, torch.Tensor]:
    check_concept_fits(model, concept)
    if concept.kind != "lora":
        raise InputError(f"{concept.describe()} is a {concept.kind} concept, not a LoRA; export it as an embedding "
                         "or in diffusers format.")
    tensors = {}
    for name, (down, up) in concept.lora_modules().items():
        stem = kohya_module_name(model, name)
        tensors[f"{stem}.lora_down.weight"] = down
        tensors[f"{stem}.lora_up.weight"] = up
        tensors[f"{stem}.alpha"] = torch.tensor(float(concept.lora_alpha))
    return tensors


def _only_trigger(concept: Concept) -> int:
    with_vectors = [k for k in range(len(concept.triggers)) if concept.embeddings(k)]
    if not with_vectors:
        raise InputError(f"{concept.describe()} has no token vector to export as an embedding.")
    if len(with_vectors) > 1:
        raise InputError(f"{concept.describe()} has {len(with_vectors)} trigger vectors; an embedding file holds "
                         "one: export it in diffusers format instead.")
    return with_vectors[0]


def to_embedding(concept: Concept, model: Model) -> dict[str, torch.Tensor]:
    check_concept_fits(model, concept)
    vectors = concept.embeddings(_only_trigger(concept))
    if model.is_sdxl:
        return {"clip_l": vectors[0], "clip_g": vectors[1]}
    return {"emb_params": vectors[0]}


def export_metadata(concept: Concept, fmt: str) -> dict[str, str]:
    return {"format": fmt, "ss_network_module": "networks.lora", "ss_network_dim": str(concept.lora_rank),
            "ss_network_alpha": str(concept.lora_alpha), "conceptkit_trigger": concept.trigger,
            "conceptkit_method": concept.method, "conceptkit_family": concept.family}


def export_kohya(concept: Concept, model: Model, path: Path, if_exists: str = "error") -> Path:
    return write_safetensors(path, to_kohya_lora(concept, model), export_metadata(concept, "pt"), if_exists)


def export_embedding(concept: Concept, model: Model, path: Path, if_exists: str = "error") -> Path:
    return write_safetensors(path, to_embedding(concept, model), {"conceptkit_trigger": concept.trigger}, if_exists)


def export_diffusers(concept: Concept, model: Model, folder: Path, if_exists: str = "error") -> Path:
    """A folder diffusers pipelines load: LoRA weights, the token embedding, and for offsets the tuned UNet.
    Written whole or not at all."""
    check_concept_fits(model, concept)
    return atomic_folder(Path(folder), lambda tmp: _fill_diffusers_folder(concept, model, tmp), if_exists)


def _fill_diffusers_folder(concept: Concept, model: Model, folder: Path) -> None:
    if concept.kind == "lora":
        names = {"unet": "unet", **{f"te{i}": "text_encoder" + (f"_{i + 1}" if i else "")
                                     for i in range(len(model.text_encoders))}}
        peft = {}
        for name, (down, up) in concept.lora_modules().items():
            root, _, path = name.partition(".")
            peft[f"{names[root]}.{path}.lora_A.weight"] = down
            peft[f"{names[root]}.{path}.lora_B.weight"] = up * concept.lora_scale  # alpha baked in: rank == alpha
        write_safetensors(folder / "pytorch_lora_weights.safetensors", peft, {"format": "pt"})
    if concept.kind == "delta":
        with patches_in_effect(apply_concept(model, concept)):
            model.unet.save_pretrained(folder / "unet", safe_serialization=True)
    for k, trigger in enumerate(concept.triggers):
        vectors = concept.embeddings(k)
        if not vectors:
            continue
        embeds = {trigger.word: vectors[0][0]} if len(vectors) == 1 else {"clip_l": vectors[0], "clip_g": vectors[1]}
        file = "learned_embeds.safetensors" if k == 0 else f"learned_embeds_{k}.safetensors"
        write_safetensors(folder / file, embeds, {"format": "pt", "trigger": trigger.word})


def import_kohya_lora(path: Path, model: Model, trigger: str = "", name: str | None = None) -> Concept:
    """A kohya-format LoRA file (ours or another tool's) as a Concept for `model` (its UNet and text
    encoder modules are matched by kohya's names, both the diffusers-style and the LDM-style ones)."""
    path = Path(path)
    tensors = load_safetensors(path)
    stems = {k[:-len(".lora_down.weight")] for k in tensors if k.endswith(".lora_down.weight")}
    if not stems:
        raise ModelLoadError(f"{path.name}: no kohya LoRA weights found (keys ending in .lora_down.weight).")
    known = {}
    for root in ["unet"] + [f"te{i}" for i in range(len(model.text_encoders))]:
        part, _ = named_part(model, root + ".")
        for module_name, module in part.named_modules():
            if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            full = canonical_name(root, part, module_name)
            if root == "unet":
                known["lora_unet_" + module_name.replace(".", "_")] = full
                ldm = _ldm_unet_name(module_name, model.unet.config.layers_per_block) if model.is_sdxl else None
                if ldm is not None:
                    known["lora_unet_" + ldm.replace(".", "_")] = full
            else:
                known[kohya_module_name(model, full)] = full
    missing = sorted(stems - set(known))
    if missing:
        raise ModelLoadError(f"{path.name}: {len(missing)} LoRA modules do not exist in this {model.family} model "
                             f"(e.g. {missing[0]}); it was made for another model family.")
    concept_tensors, ranks, alphas = {}, set(), set()
    for stem in sorted(stems):
        down, up = tensors[f"{stem}.lora_down.weight"], tensors[f"{stem}.lora_up.weight"]
        if down.ndim != 2:
            raise ModelLoadError(f"{path.name}: '{stem}' is a convolution LoRA, which ConceptKit does not apply yet.")
        rank = down.shape[0]
        alpha = float(tensors[f"{stem}.alpha"]) if f"{stem}.alpha" in tensors else float(rank)
        ranks.add(rank)
        alphas.add(alpha)
        concept_tensors[f"lora.{known[stem]}.down"] = down
        concept_tensors[f"lora.{known[stem]}.up"] = up * (alpha / rank)  # one scale for all modules: bake it in
    return Concept(name=name or path.stem, method="imported_lora", family=model.family,
                   base_fingerprint=model.fingerprint(), triggers=(Trigger(trigger, ""),) if trigger else (),
                   tensors=concept_tensors,
                   lora_rank=1, lora_alpha=1.0, parameters={"source": path.name, "ranks": sorted(ranks)})


EXPORT_FORMATS = ("kohya_lora", "embedding", "diffusers")


def export_concept(concept: Concept, model: Model, fmt: str, folder: Path, name: str, if_exists: str = "error"
                   ) -> Path:
    """Write `concept` in one of EXPORT_FORMATS as NAME.safetensors (a folder NAME for diffusers) in `folder`;
    a taken name per `if_exists` (IF_EXISTS). Returns the path written."""
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"format '{fmt}' is not one of {', '.join(EXPORT_FORMATS)}.")
    name = safe_file_name(name, "export name").removesuffix(".safetensors")
    if fmt == "kohya_lora":
        return export_kohya(concept, model, Path(folder) / f"{name}.safetensors", if_exists)
    if fmt == "embedding":
        return export_embedding(concept, model, Path(folder) / f"{name}.safetensors", if_exists)
    return export_diffusers(concept, model, Path(folder) / name, if_exists)
