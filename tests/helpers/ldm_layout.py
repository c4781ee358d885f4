"""Write diffusers modules in the original LDM (single-file checkpoint) key layout.

The inverse of what core converts, written independently from the LDM code's structure, so a
round trip through core checks the conversion rather than repeating it.
"""

from __future__ import annotations

import torch

RESNET_UNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
               "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
RESNET_VAE = {"conv_shortcut": "nin_shortcut"}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(key: str, prefixes: dict[str, str], inner: dict[str, str]) -> str:
    for src in sorted(prefixes, key=len, reverse=True):
        if key.startswith(src):
            rest = key[len(src):]
            if ".resnets." in src or src.startswith(("mid_block.resnets", "encoder.mid_block.resnets",
                                                      "decoder.mid_block.resnets")):
                for a, b in inner.items():
                    if rest.startswith(a + "."):
                        rest = b + rest[len(a):]
            return prefixes[src] + rest
    return key


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    cfg = unet.config
    L, n = cfg.layers_per_block, len(cfg.block_out_channels)
    m = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
         "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
         "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
         "mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
         "mid_block.resnets.1.": "middle_block.2."}
    for i in range(n):
        for j in range(L):
            m[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{i * (L + 1) + j + 1}.0."
            m[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{i * (L + 1) + j + 1}.1."
        if i < n - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * (L + 1)}.0.op."
        for j in range(L + 1):
            m[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{i * (L + 1) + j}.0."
            m[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{i * (L + 1) + j}.1."
        if i < n - 1:
            has_attn = cfg.up_block_types[i].startswith("CrossAttn")
            m[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{i * (L + 1) + L}.{2 if has_attn else 1}."
    return {"model.diffusion_model." + _rename(k, m, RESNET_UNET): v.clone() for k, v in unet.state_dict().items()}


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    n = len(vae.config.block_out_channels)
    m = {}
    for part in ("encoder", "decoder"):
        m.update({f"{part}.conv_norm_out.": f"{part}.norm_out.",
                  f"{part}.mid_block.resnets.0.": f"{part}.mid.block_1.",
                  f"{part}.mid_block.resnets.1.": f"{part}.mid.block_2.",
                  f"{part}.mid_block.attentions.0.": f"{part}.mid.attn_1."})
    for i in range(n):
        for j in range(vae.config.layers_per_block + 1):
            m[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
            m[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{n - 1 - i}.block.{j}."
        m[f"encoder.down_blocks.{i}.downsamplers.0.conv."] = f"encoder.down.{i}.downsample.conv."
        m[f"decoder.up_blocks.{i}.upsamplers.0.conv."] = f"decoder.up.{n - 1 - i}.upsample.conv."
    out = {}
    for k, v in vae.state_dict().items():
        key = _rename(k, m, RESNET_VAE)
        if ".mid.attn_1." in key:
            head, rest = key.split(".mid.attn_1.")
            for a, b in VAE_ATTN.items():
                if rest.startswith(a + "."):
                    rest = b + rest[len(a):]
            key = f"{head}.mid.attn_1.{rest}"
            if v.ndim == 2:
                v = v[:, :, None, None]
        out["first_stage_model." + key] = v.clone()
    return out


def hf_state_dict(encoder) -> dict[str, torch.Tensor]:
    """The encoder's weights named as checkpoints name them ('text_model.*'), whatever transformers does."""
    return {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v
            for k, v in encoder.state_dict().items() if not k.endswith("position_ids")}


def clip_to_ldm(encoder, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v.clone() for k, v in hf_state_dict(encoder).items() if not k.startswith("text_projection")}


def open_clip_to_ldm(encoder, prefix: str, extra_last_layer: bool = False) -> dict[str, torch.Tensor]:
    sd = hf_state_dict(encoder)
    hidden = encoder.config.hidden_size
    out = {prefix + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           prefix + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": sd["text_model.final_layer_norm.weight"],
           prefix + "ln_final.bias": sd["text_model.final_layer_norm.bias"],
           prefix + "text_projection": sd["text_projection.weight"].T.contiguous() if "text_projection.weight" in sd
           else torch.randn(hidden, hidden)}
    n = encoder.config.num_hidden_layers
    for i in range(n + (1 if extra_last_layer else 0)):
        src = f"text_model.encoder.layers.{min(i, n - 1)}."
        dst = f"{prefix}transformer.resblocks.{i}."
        noise = (lambda t: torch.randn_like(t)) if i == n else (lambda t: t)  # the dropped layer: any weights
        for w in ("weight", "bias"):
            out[dst + f"attn.in_proj_{w}"] = noise(torch.cat([sd[src + f"self_attn.{p}_proj.{w}"] for p in "qkv"]))
            out[dst + f"attn.out_proj.{w}"] = noise(sd[src + f"self_attn.out_proj.{w}"])
            out[dst + f"ln_1.{w}"] = noise(sd[src + f"layer_norm1.{w}"])
            out[dst + f"ln_2.{w}"] = noise(sd[src + f"layer_norm2.{w}"])
            out[dst + f"mlp.c_fc.{w}"] = noise(sd[src + f"mlp.fc1.{w}"])
            out[dst + f"mlp.c_proj.{w}"] = noise(sd[src + f"mlp.fc2.{w}"])
    return {k: v.clone().contiguous() for k, v in out.items()}


def to_ldm_checkpoint(family: str, parts: dict) -> dict[str, torch.Tensor]:
    """A whole single-file checkpoint of `family` in LDM layout."""
    sd = {**unet_to_ldm(parts["unet"]), **vae_to_ldm(parts["vae"])}
    encoders = parts["text_encoders"]
    if family == "sd1":
        sd.update(clip_to_ldm(encoders[0], "cond_stage_model.transformer."))
    elif family == "sd2":
        sd.update(open_clip_to_ldm(encoders[0], "cond_stage_model.model.", extra_last_layer=True))
    else:
        sd.update(clip_to_ldm(encoders[0], "conditioner.embedders.0.transformer."))
        sd.update(open_clip_to_ldm(encoders[1], "conditioner.embedders.1.model."))
    return sd
