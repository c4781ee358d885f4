"""Small random-weight models of the real SD 1.x, SD 2.x and SDXL architectures.

Same block types, key names and config conventions as the real families (SD1: 8 heads, conv
proj_in, quick_gelu CLIP; SD2/SDXL: 64-channel heads, linear proj_in, OpenCLIP gelu), fewer channels.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from clip_tokenizer import write_clip_tokenizer

WORDS = "a photo of red blue green cat dog star circle on the left right small large background".split()


@functools.cache
def tokenizer_size() -> int:
    with tempfile.TemporaryDirectory() as d:
        return len(write_tokenizer(Path(d)))


def _text_encoder(hidden: int, layers: int, act: str, vocab: int, projection: int | None = None):
    config = CLIPTextConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64), max_position_embeddings=77, hidden_act=act,
        projection_dim=projection or hidden, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def _vae(scaling: float) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1, scaling_factor=scaling,
    ).eval()


def build(family: str, seed: int = 0) -> dict:
    """The parts of a tiny model of `family` as diffusers/transformers modules (plus scheduler config)."""
    torch.manual_seed(seed)
    vocab = tokenizer_size()
    common = dict(sample_size=16, in_channels=4, out_channels=4)
    if family == "sd1":
        unet = UNet2DConditionModel(
            **common, block_out_channels=(32, 64), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        )
        encoders = [_text_encoder(32, 2, "quick_gelu", vocab)]
        scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        vae = _vae(0.18215)
    elif family == "sd2":
        unet = UNet2DConditionModel(
            **common, block_out_channels=(64, 128), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
            attention_head_dim=[1, 2], use_linear_projection=True,
        )
        encoders = [_text_encoder(64, 2, "gelu", vocab)]
        scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                  prediction_type="v_prediction")
        vae = _vae(0.18215)
    elif family == "sdxl":
        unet = UNet2DConditionModel(
            **common, block_out_channels=(64, 128), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32 + 64,
            attention_head_dim=[1, 2], use_linear_projection=True, transformer_layers_per_block=[1, 2],
            addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 48,
        )
        encoders = [_text_encoder(32, 2, "quick_gelu", vocab), _text_encoder(64, 2, "gelu", vocab, projection=32)]
        scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                           steps_offset=1, timestep_spacing="leading")
        vae = _vae(0.13025)
    else:
        raise ValueError(family)
    return {"unet": unet.eval(), "vae": vae, "text_encoders": encoders, "scheduler": scheduler}


def write_tokenizer(folder: Path):
    return write_clip_tokenizer(WORDS, folder)


def save_diffusers_folder(parts: dict, folder: Path) -> Path:
    """Save as a diffusers folder that StableDiffusion(XL)Pipeline.from_pretrained loads."""
    folder = Path(folder)
    parts["unet"].save_pretrained(folder / "unet")
    parts["vae"].save_pretrained(folder / "vae")
    parts["scheduler"].save_pretrained(folder / "scheduler")
    names = ["text_encoder", "text_encoder_2"][: len(parts["text_encoders"])]
    for name, encoder in zip(names, parts["text_encoders"], strict=True):
        encoder.save_pretrained(folder / name)
        tokenizer_dir = folder / name.replace("text_encoder", "tokenizer")
        write_tokenizer(tokenizer_dir)
    sdxl = len(names) == 2
    index = {
        "_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", type(parts["scheduler"]).__name__],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
    }
    if sdxl:
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"], force_zeros_for_empty_prompt=True)
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder
