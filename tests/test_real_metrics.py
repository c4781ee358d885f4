"""CLIP-T, CLIP-I and DINO from local weight folders, on tiny random configurations of the real models."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, Dinov2Config, Dinov2Model

from conceptkit.core.errors import ModelLoadError
from conceptkit.core.metrics.real_models import ClipScorer, DinoScorer

from clip_tokenizer import write_clip_tokenizer

WORDS = ["a", "red", "blue", "circle", "square", "on", "the", "left"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    tokenizer = write_clip_tokenizer(WORDS, folder, max_length=16)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=len(tokenizer), max_position_embeddings=16,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dino_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dino")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=28, patch_size=7)).save_pretrained(folder)
    return folder


def images(seed: int, n: int = 3) -> torch.Tensor:
    return torch.rand(n, 40, 40, 3, generator=torch.Generator().manual_seed(seed))


def test_clip_t_is_the_models_own_image_text_similarity(clip_folder):
    scorer = ClipScorer(clip_folder)
    prompts = ["a red circle on the left", "a blue square", "a blue circle"]
    batch = images(0)
    processed = CLIPImageProcessor.from_pretrained(clip_folder)(
        images=list((batch * 255).round().to(torch.uint8).numpy()), return_tensors="pt")
    tokens = scorer.tokenizer(prompts, padding="max_length", max_length=16, return_tensors="pt")
    model = CLIPModel.from_pretrained(clip_folder).eval()
    with torch.no_grad():
        out = model(input_ids=tokens.input_ids, pixel_values=processed.pixel_values)
    reference = (out.logits_per_image.diagonal() / model.logit_scale.exp()).mean().item()
    assert scorer.clip_t(batch, prompts) == pytest.approx(reference, abs=1e-3)
    assert -1.0 <= scorer.clip_t(batch, prompts) <= 1.0


def test_clip_i_and_dino_are_one_for_an_image_and_itself_and_lower_for_others(clip_folder, dino_folder):
    clip, dino = ClipScorer(clip_folder), DinoScorer(dino_folder)
    one, other = images(1, 1), images(2, 1) * 0.2  # a dark noise image
    assert clip.clip_i(one, one) == pytest.approx(1.0, abs=1e-5)
    assert dino.dino(one, one) == pytest.approx(1.0, abs=1e-5)
    assert clip.clip_i(one, other) < 0.999
    assert dino.dino(one, other) < 0.999


def test_scorers_refuse_missing_and_pickle_only_folders(tmp_path, clip_folder):
    with pytest.raises(ModelLoadError, match="no CLIP model there"):
        ClipScorer(tmp_path / "nothing")
    pickle_only = tmp_path / "pickle_only"
    pickle_only.mkdir()
    (pickle_only / "config.json").write_text((clip_folder / "config.json").read_text())
    torch.save({}, pickle_only / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="could not load the DINO model"):
        DinoScorer(pickle_only)
