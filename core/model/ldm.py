"""LDM-layout state dicts (single-file checkpoints, ComfyUI's models) -> diffusers modules.

Sizes are read from the tensors' shapes and the rest from the family's shipped configuration, so full
checkpoints, pruned ones and small test models of the real architectures convert the same way.
The key renaming itself is diffusers' own (`diffusers.loaders.single_file_utils`).
"""

from __future__ import annotations

import re

import torch

from ..errors import ModelLoadError
from .family import UNET_PREFIX, VAE_PREFIX, FamilySpec, TextEncoderSpec

StateDict = dict[str, torch.Tensor]


def _indices(sd: StateDict, prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pattern.match(k))})


def _require(sd: StateDict, key: str, source: str) -> torch.Tensor:
    if key not in sd:
        raise ModelLoadError(f"{source}: expected weight '{key}' is missing; the checkpoint is incomplete or damaged.")
    return sd[key]


def unet_config_from_ldm(sd: StateDict, spec: FamilySpec, source: str) -> dict:
    """diffusers UNet2DConditionModel config for an LDM UNet, sizes read from the weights."""
    p = UNET_PREFIX
    conv_in = _require(sd, p + "input_blocks.0.0.weight", source)
    model_channels, in_channels = conv_in.shape[:2]
    input_ids = _indices(sd, p + "input_blocks.")
    down_ids = [i for i in input_ids if p + f"input_blocks.{i}.0.op.weight" in sd]
    levels = len(down_ids) + 1
    layers = (len(input_ids) - 1 - len(down_ids)) // levels

    block_out, depths = [], []
    for level in range(levels):
        first = level * (layers + 1) + 1
        block_out.append(_require(sd, p + f"input_blocks.{first}.0.out_layers.3.weight", source).shape[0])
        depths.append(len(_indices(sd, p + f"input_blocks.{first}.1.transformer_blocks.")))
    mid_depth = len(_indices(sd, p + "middle_block.1.transformer_blocks."))
    attn_depths = [d if d else mid_depth for d in depths]
    transformer_layers = attn_depths[0] if len(set(attn_depths)) == 1 else attn_depths
    if isinstance(transformer_layers, list) and transformer_layers[-1] != mid_depth:
        raise ModelLoadError(f"{source}: unsupported UNet layout (middle block depth {mid_depth}).")

    first_attn = next(level * (layers + 1) + 1 for level in range(levels) if depths[level])
    attn_prefix = p + f"input_blocks.{first_attn}.1."
    context_dim = _require(sd, attn_prefix + "transformer_blocks.0.attn2.to_k.weight", source).shape[1]
    use_linear = _require(sd, attn_prefix + "proj_in.weight", source).ndim == 2

    if "num_heads" in spec.unet_heads:
        head_dim = spec.unet_heads["num_heads"]
    else:
        head_dim = [max(1, ch // spec.unet_heads["num_head_channels"]) for ch in block_out]

    config = {
        "sample_size": spec.default_size // 8,
        "in_channels": in_channels,
        "out_channels": _require(sd, p + "out.2.weight", source).shape[0],
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)],
        "block_out_channels": block_out,
        "layers_per_block": layers,
        "cross_attention_dim": context_dim,
        "attention_head_dim": head_dim,
        "use_linear_projection": use_linear,
        "transformer_layers_per_block": transformer_layers,
        "class_embed_type": None,
        "addition_embed_type": None,
        "addition_time_embed_dim": None,
        "projection_class_embeddings_input_dim": None,
    }
    if p + "label_emb.0.0.weight" in sd:  # SDXL: pooled text embedding + size/crop conditioning
        adm_in = sd[p + "label_emb.0.0.weight"].shape[1]
        pooled_dim = _pooled_text_dim(sd, spec, source)
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=(adm_in - pooled_dim) // 6,
            projection_class_embeddings_input_dim=adm_in,
        )
    return config


def _pooled_text_dim(sd: StateDict, spec: FamilySpec, source: str) -> int:
    te = next(te for te in spec.text_encoders if te.with_projection)
    return _require(sd, te.ldm_prefix + "text_projection", source).shape[1]


def vae_config_from_ldm(sd: StateDict, spec: FamilySpec, source: str) -> dict:
    p = VAE_PREFIX + "encoder.down."
    levels = _indices(sd, p)
    if not levels:
        raise ModelLoadError(f"{source}: the checkpoint has no VAE weights ('{VAE_PREFIX}...'); bake a VAE into it.")
    block_out = [_require(sd, p + f"{i}.block.0.conv2.weight", source).shape[0] for i in levels]
    return {
        "in_channels": _require(sd, VAE_PREFIX + "encoder.conv_in.weight", source).shape[1],
        "out_channels": _require(sd, VAE_PREFIX + "decoder.conv_out.weight", source).shape[0],
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": block_out,
        "latent_channels": _require(sd, VAE_PREFIX + "post_quant_conv.weight", source).shape[1],
        "layers_per_block": len(_indices(sd, p + "0.block.")),
        "sample_size": spec.default_size,
        "scaling_factor": spec.vae_scaling_factor,
    }


def _text_encoder_from_ldm(sd: StateDict, te: TextEncoderSpec, source: str):
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    pre = te.ldm_prefix
    if te.kind == "clip":
        layers_prefix = pre + "text_model.encoder.layers."
        tok = _require(sd, pre + "text_model.embeddings.token_embedding.weight", source)
        pos = _require(sd, pre + "text_model.embeddings.position_embedding.weight", source)
        fc1 = _require(sd, layers_prefix + "0.mlp.fc1.weight", source)
    else:
        layers_prefix = pre + "transformer.resblocks."
        tok = _require(sd, pre + "token_embedding.weight", source)
        pos = _require(sd, pre + "positional_embedding", source)
        fc1 = _require(sd, layers_prefix + "0.mlp.c_fc.weight", source)
    n_layers = len(_indices(sd, layers_prefix))
    if te.drop_last_layer:  # SD 2.x conditions on the penultimate layer: diffusers drops the last one
        last = f"{layers_prefix}{n_layers - 1}."
        sd = {k: v for k, v in sd.items() if not k.startswith(last)}
        n_layers -= 1
    hidden = tok.shape[1]
    config = CLIPTextConfig(
        vocab_size=tok.shape[0],
        hidden_size=hidden,
        intermediate_size=fc1.shape[0],
        num_hidden_layers=n_layers,
        num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=pos.shape[0],
        hidden_act=te.hidden_act,
        projection_dim=sd[pre + "text_projection"].shape[1] if te.with_projection else hidden,
        bos_token_id=tok.shape[0] - 2,  # CLIP vocabularies end with <|startoftext|>, <|endoftext|>
        eos_token_id=tok.shape[0] - 1,
    )
    cls = CLIPTextModelWithProjection if te.with_projection else CLIPTextModel
    model = cls(config)
    if te.kind == "clip":
        weights = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
    else:
        weights = convert_open_clip_checkpoint(model, sd, prefix=pre)
    weights.pop("text_model.embeddings.position_ids", None)
    if not te.with_projection:
        weights.pop("text_projection.weight", None)
    _load_strict(model, hf_clip_layout(weights, model), f"{source} (text encoder '{pre}')")
    return model


def hf_clip_layout(weights: StateDict, model: torch.nn.Module) -> StateDict:
    """Checkpoints name CLIP weights 'text_model.*'; some transformers versions drop that prefix."""
    if any(k.startswith("text_model.") for k in model.state_dict()):
        return weights
    return {k.removeprefix("text_model."): v for k, v in weights.items()}


def _load_strict(module: torch.nn.Module, weights: StateDict, what: str) -> None:
    missing, unexpected = module.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelLoadError(
            f"{what}: weights do not match the detected architecture "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}). "
            "The file may be damaged or of an unsupported variant."
        )


def modules_from_ldm(sd: StateDict, spec: FamilySpec, source: str):
    """(unet, vae, text_encoders) as diffusers / transformers modules in fp32 on the CPU."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    unet_config = unet_config_from_ldm(sd, spec, source)
    unet = UNet2DConditionModel(**unet_config)
    _load_strict(unet, convert_ldm_unet_checkpoint(sd, unet_config), f"{source} (UNet)")

    vae_config = vae_config_from_ldm(sd, spec, source)
    vae = AutoencoderKL(**vae_config)
    _load_strict(vae, convert_ldm_vae_checkpoint(sd, vae_config), f"{source} (VAE)")

    text_encoders = [_text_encoder_from_ldm(sd, te, source) for te in spec.text_encoders]
    return unet, vae, text_encoders
