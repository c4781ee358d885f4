"""Concept files and exports: kohya LoRA for SD 1.x and SDXL that reloads exactly (ours and diffusers'),
textual-inversion embeddings, diffusers folders, safe writing and loading."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from conceptkit.core.concepts import Concept, Trigger, apply_concept, load_concept, save_concept
from conceptkit.core.concepts.export import (
    export_diffusers,
    export_embedding,
    export_kohya,
    import_kohya_lora,
    to_kohya_lora,
)
from conceptkit.core.errors import ConceptKitError, InputError, ModelLoadError, UnsafeFileError
from conceptkit.core.model import encode_prompts, load_model, patches_in_effect

from helpers.concepts import lora_concept
from helpers.parity import _unet_inputs


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def family_model(request, models_dir):
    return request.param, load_model(models_dir / "diffusers" / f"tiny_{request.param}", device="cpu")


@torch.no_grad()
def unet_output(model, parts_like):
    x, t, context, added = _unet_inputs(parts_like)
    with patches_in_effect(model):
        return model.unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample


@torch.no_grad()
def text_output(model, prompt="a <t1> cat on the left"):
    with patches_in_effect(model):
        return encode_prompts(model, [prompt]).hidden


@torch.no_grad()
def assert_pipeline_unet_matches(pipe, model, parts_like):
    x, t, context, _ = _unet_inputs(parts_like)
    theirs = pipe.unet(x, t, encoder_hidden_states=context).sample
    torch.testing.assert_close(unet_output(model, parts_like), theirs, atol=1e-5, rtol=0)


def test_kohya_export_names_every_module_and_reimports_exactly(family_model, tiny_parts, tmp_path):
    family, model = family_model
    concept = lora_concept(model)
    path = export_kohya(concept, model, tmp_path / "lora.safetensors")
    tensors = load_file(str(path))
    stems = {k.rsplit(".", 2)[0] for k in tensors if k.endswith(".lora_down.weight")}
    assert len(stems) == len(concept.lora_modules())
    unet_stems = {s for s in stems if s.startswith("lora_unet_")}
    if family == "sdxl":  # kohya's SDXL trainer names modules in the LDM (sgm) layout
        assert all(re.match(r"lora_unet_(input_blocks_\d|middle_block_1|output_blocks_\d)", s) for s in unet_stems)
        assert {s.split("_")[1] for s in stems - unet_stems} == {"te1", "te2"}
    else:  # kohya's SD 1.x names: diffusers module paths
        assert all(re.match(r"lora_unet_(down_blocks_\d|mid_block_attentions_0|up_blocks_\d)", s) for s in unet_stems)
        assert all(s.startswith("lora_te_text_model_encoder_layers_") for s in stems - unet_stems)
    for stem in stems:
        assert tensors[f"{stem}.alpha"].item() == 3.0

    reimported = import_kohya_lora(path, model)
    original, again = apply_concept(model, concept), apply_concept(model, reimported)
    base = unet_output(model, tiny_parts[family])
    expected = unet_output(original, tiny_parts[family])
    assert (expected - base).abs().max() > 1e-3  # the LoRA does change the output
    torch.testing.assert_close(unet_output(again, tiny_parts[family]), expected, atol=1e-5, rtol=0)


def test_diffusers_loads_our_kohya_lora_and_gets_our_unet_output(models_dir, tiny_parts, tmp_path):
    model = load_model(models_dir / "diffusers" / "tiny_sd1", device="cpu")
    concept = lora_concept(model, text_encoders=False)
    export_kohya(concept, model, tmp_path / "lora.safetensors")
    pipe = StableDiffusionPipeline.from_pretrained(models_dir / "diffusers" / "tiny_sd1", local_files_only=True)
    pipe.load_lora_weights(str(tmp_path), weight_name="lora.safetensors")
    assert_pipeline_unet_matches(pipe, apply_concept(model, concept), tiny_parts["sd1"])


def test_embedding_export_in_a1111_and_comfyui_layout(family_model, tmp_path):
    family, model = family_model
    concept = lora_concept(model)
    tensors = load_file(str(export_embedding(concept, model, tmp_path / "emb.safetensors")))
    if family == "sdxl":
        assert set(tensors) == {"clip_l", "clip_g"}
        assert tensors["clip_l"].shape == (1, 32) and tensors["clip_g"].shape == (1, 64)
    else:
        assert set(tensors) == {"emb_params"} and tensors["emb_params"].shape == (1, 32)


def test_the_trigger_token_uses_the_concepts_vector(models_dir):
    model = load_model(models_dir / "diffusers" / "tiny_sd1", device="cpu")
    concept = lora_concept(model, text_encoders=False)
    with_concept = apply_concept(model, concept)
    zero_vector = {**concept.tensors, "embedding.0.te0": torch.zeros_like(concept.tensors["embedding.0.te0"])}
    other = Concept(**{**concept.__dict__, "tensors": zero_vector})
    assert not torch.allclose(text_output(with_concept), text_output(apply_concept(model, other)))
    torch.testing.assert_close(text_output(with_concept, "a cat"), text_output(model, "a cat"))  # others unchanged
    with pytest.raises(InputError, match="already applied"):
        apply_concept(with_concept, concept)


def test_diffusers_export_loads_in_a_diffusers_pipeline(models_dir, tiny_parts, tmp_path):
    model = load_model(models_dir / "diffusers" / "tiny_sd1", device="cpu")
    concept = lora_concept(model, text_encoders=False)
    folder = export_diffusers(concept, model, tmp_path / "export")
    pipe = StableDiffusionPipeline.from_pretrained(models_dir / "diffusers" / "tiny_sd1", local_files_only=True)
    pipe.load_lora_weights(str(folder))
    pipe.load_textual_inversion(str(folder / "learned_embeds.safetensors"))
    assert "<t1>" in pipe.tokenizer.get_vocab()
    assert_pipeline_unet_matches(pipe, apply_concept(model, concept), tiny_parts["sd1"])


def test_applying_leaves_the_base_model_untouched(models_dir, tiny_parts):
    model = load_model(models_dir / "diffusers" / "tiny_sd1", device="cpu")
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    delta = Concept(name="d", method="test", family="sd1", base_fingerprint=model.fingerprint(),
                    triggers=(Trigger("<d>", "cat"),),
                    tensors={"delta.unet.conv_in.weight": torch.ones_like(model.unet.conv_in.weight)})
    applied = apply_concept(apply_concept(model, lora_concept(model)), delta, 0.5)  # a LoRA and an offset
    changed = unet_output(applied, tiny_parts["sd1"])
    assert (changed - unet_output(model, tiny_parts["sd1"])).abs().max() > 1e-3
    after = model.unet.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


def test_a_concept_for_another_family_is_refused_with_the_reason(models_dir):
    sd1 = load_model(models_dir / "diffusers" / "tiny_sd1", device="cpu")
    sdxl = load_model(models_dir / "diffusers" / "tiny_sdxl", device="cpu")
    with pytest.raises(InputError, match="made for sd1|trained for"):
        apply_concept(sdxl, lora_concept(sd1))
    with pytest.raises(InputError, match="sd1"):
        to_kohya_lora(lora_concept(sd1), sdxl)


def test_concept_files_round_trip_and_are_written_safely(models_dir, tmp_path):
    model = load_model(models_dir / "diffusers" / "tiny_sd1", device="cpu")
    concept = lora_concept(model)
    path = save_concept(concept, tmp_path / "c.safetensors")
    loaded = load_concept(path)
    assert (loaded.trigger, loaded.family, loaded.lora_rank, loaded.lora_alpha) == ("<t1>", "sd1", 2, 3.0)
    assert set(loaded.tensors) == set(concept.tensors)
    with pytest.raises(InputError, match="already exists"):
        save_concept(concept, path)
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary files left behind

    (tmp_path / "c.ckpt").write_bytes(b"not really a pickle")
    with pytest.raises(UnsafeFileError, match="pickle"):
        load_concept(tmp_path / "c.ckpt")
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="t.safetensors"):
        load_concept(truncated)
    with pytest.raises(ModelLoadError, match="not a ConceptKit concept"):
        load_concept(export_kohya(concept, model, tmp_path / "k.safetensors"))


def test_names_with_folders_are_refused():
    from conceptkit.core.concepts import concept_path

    for bad in ("../evil", "a/b", "c:\\x", "", ".hidden"):
        with pytest.raises(ConceptKitError):
            concept_path("/tmp", bad)
    assert concept_path("/tmp", "my_dog").name == "my_dog.safetensors"


def test_a_trained_lora_exports_a_kohya_key_for_every_trained_module(family_model, tiny_parts, tmp_path):
    from conceptkit.core.methods.lipschitz_finetune import finetune
    from conceptkit.core.training import TrainConfig

    family, model = family_model
    config = TrainConfig(trigger="<t9>", class_word="cat", steps=2, batch_size=2, rank=2, train_text_encoder=True)
    concept = finetune(model, torch.rand(2, 32, 32, 3), config).concept
    trained = set(concept.lora_modules())
    assert any(n.startswith("unet.") for n in trained) and any(n.startswith("te0.") for n in trained)
    path = export_kohya(concept, model, tmp_path / "trained.safetensors")
    stems = {k.rsplit(".", 2)[0] for k in load_file(str(path)) if k.endswith(".lora_down.weight")}
    assert len(stems) == len(trained)
    again = apply_concept(model, import_kohya_lora(path, model, trigger="<t9>"))
    torch.testing.assert_close(unet_output(again, tiny_parts[family]),
                               unet_output(apply_concept(model, concept), tiny_parts[family]), atol=1e-5, rtol=0)
