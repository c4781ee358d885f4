"""Concepts with random weights, of each kind, for tests of applying and guidance."""

from __future__ import annotations

import torch

from conceptkit.core.concepts import Concept, Trigger
from conceptkit.core.model.patches import canonical_name


def lora_concept(model, rank=2, alpha=3.0, text_encoders=True, seed=0) -> Concept:
    """A LoRA concept on every attention projection of the UNet (and text encoders), random weights."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    parts = [("unet", model.unet, ("to_q", "to_k", "to_v", "to_out.0"))]
    if text_encoders:
        text_attention = ("q_proj", "k_proj", "v_proj", "out_proj")
        parts += [(f"te{i}", te, text_attention) for i, te in enumerate(model.text_encoders)]
    for root, part, suffixes in parts:
        for name, module in part.named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(suffixes):
                name = canonical_name(root, part, name).partition(".")[2]
                tensors[f"lora.{root}.{name}.down"] = torch.randn(rank, module.in_features, generator=gen) * 0.1
                tensors[f"lora.{root}.{name}.up"] = torch.randn(module.out_features, rank, generator=gen) * 0.1
    for i, te in enumerate(model.text_encoders):
        tensors[f"embedding.0.te{i}"] = torch.randn(1, te.get_input_embeddings().weight.shape[1], generator=gen)
    return Concept(name="test", method="test", family=model.family, base_fingerprint=model.fingerprint(),
                   triggers=(Trigger("<t1>", "cat"),), tensors=tensors, lora_rank=rank, lora_alpha=alpha)


def delta_concept(model, scale=0.02, seed=1, trigger="<t2>") -> Concept:
    """A full weight offset on every attention weight of the UNet (a full/attention fine-tune's kind)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {f"delta.unet.{name}": torch.randn(p.shape, generator=gen) * scale
               for name, p in model.unet.named_parameters() if ".attn" in name and name.endswith("weight")}
    return Concept(name="delta", method="test", family=model.family, base_fingerprint=model.fingerprint(),
                   triggers=(Trigger(trigger, "cat"),), tensors=tensors)
