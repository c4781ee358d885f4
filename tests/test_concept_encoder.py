"""Concept Encoder (E4T): pre-training (resume, accelerate), one-image tuning, sampling with the encoder at every
step, the concept file and its exports, and the bad inputs the issue names."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conceptkit.core.concepts import apply_concept, load_concept, save_concept
from conceptkit.core.concepts.export import export_concept
from conceptkit.core.errors import Cancelled, InputError
from conceptkit.core.methods.concept_encoder import (
    EMBEDDED_ENCODER,
    Pretrained,
    PretrainSettings,
    TuneSettings,
    backbone_for,
    load_encoder,
    one_rgb_image,
    pretrain_encoder,
    save_encoder,
    tune_concept,
)
from conceptkit.core.methods.concept_encoder.domain import folder_domain
from conceptkit.core.methods.concept_encoder.training import PRETRAIN_TRIGGER
from conceptkit.core.methods.personalization_guidance import PersonalizationGuidance
from conceptkit.core.model import EMBEDDED, load_model
from conceptkit.core.model.image_features import clip_backbone, load_clip_vision, world_backbone
from conceptkit.core.sampling import CFG, sample
from conceptkit.core.world.subjects import training_renders

PROMPT = "a <c0> creature on the left, red background"


@pytest.fixture(scope="module")
def world():
    return load_model(EMBEDDED)


@pytest.fixture(scope="module")
def encoder(world):
    return load_encoder(EMBEDDED_ENCODER, world)


@pytest.fixture(scope="module")
def subject_image():
    images, _ = training_renders(0, 1)
    return images[0]  # uint8 [64, 64, 3]


@pytest.fixture(scope="module")
def concept(world, encoder, subject_image):
    pixels = one_rgb_image(subject_image, world.default_size)
    return tune_concept(world, encoder, world_backbone(world), pixels, "<c0>", TuneSettings(steps=2, batch_size=2))


def count_unet_calls(model):
    calls = []
    handle = model.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


# --- sampling ---------------------------------------------------------------------------------------------------

def test_the_encoder_recomputes_the_trigger_vector_at_every_step_from_the_unconditional_pass(world, concept):
    model = apply_concept(world, concept)
    seen = []
    from conceptkit.core.methods.concept_encoder.sampling import EncoderSteps

    original = EncoderSteps.before_step

    def spy(self, step, latents, uncond, denoise):
        original(self, step, latents, uncond, denoise)
        seen.append((self.own_passes, self.state.token_rows("<c0>")[0].rows[0].detach().clone()))

    EncoderSteps.before_step = spy
    calls, handle = count_unet_calls(world)
    try:
        sample(model, PROMPT, batch_size=2, steps=6, seed=1)
    finally:
        EncoderSteps.before_step = original
        handle.remove()
    assert len(seen) == 6
    vectors = [v for _, v in seen]
    assert all(v.shape == (2, 128) for v in vectors)  # one e* per image of the batch
    assert not torch.allclose(vectors[0][0], vectors[0][1])  # ... computed from each image's own latent
    assert not torch.allclose(vectors[1], vectors[4])  # ... and at every step
    assert seen[-1][0] == 1  # only the first step paid a pass of its own: the others reuse CFG's unconditional
    assert len(calls) == 6 + 1  # so sampling costs CFG's passes plus one


def test_an_applied_encoder_concept_changes_the_images_and_strength_zero_is_the_class_word(world, concept):
    with_concept = sample(apply_concept(world, concept), PROMPT, seed=3, steps=8).images
    class_word = sample(world, PROMPT.replace("<c0>", "creature"), seed=3, steps=8).images
    off = sample(apply_concept(world, concept, 0.0), PROMPT, seed=3, steps=8).images
    assert (with_concept - class_word).abs().mean() > 1e-3
    assert (off - class_word).abs().max() < 1e-4  # e* = e_class and no offsets: the class word's images


def test_concept_file_round_trip_draws_the_same_images(world, concept, tmp_path):
    path = save_concept(concept, tmp_path / "c0.safetensors")
    loaded = load_concept(path)
    assert loaded.method == "e4t" and loaded.groups() == ["e4t"]
    first = sample(apply_concept(world, concept), PROMPT, seed=4, steps=6).images
    again = sample(apply_concept(world, loaded), PROMPT, seed=4, steps=6).images
    assert torch.equal(first, again)


def test_works_with_the_personalization_guidance_sampler(world, concept):
    model = apply_concept(world, concept)
    guided = sample(model, PROMPT, seed=5, steps=6, guidance=PersonalizationGuidance(7.5, 0.5)).images
    cfg = sample(model, PROMPT, seed=5, steps=6, guidance=CFG(7.5)).images
    assert torch.isfinite(guided).all() and (guided - cfg).abs().mean() > 1e-4


def test_exports_the_step_averaged_vector_as_an_embedding_and_a_diffusers_folder(world, concept, tmp_path):
    from safetensors.torch import load_file

    embedding = export_concept(concept, world, "embedding", tmp_path, "c0")
    vectors = load_file(str(embedding))["emb_params"]
    assert torch.allclose(vectors, concept.embeddings(0)[0])
    assert not torch.allclose(vectors[0], concept.group("e4t")["class.te0"])  # not just the class word
    folder = export_concept(concept, world, "diffusers", tmp_path, "c0_diffusers")
    assert (folder / "learned_embeds.safetensors").is_file() and (folder / "unet").is_dir()  # offsets baked in


# --- tuning -------------------------------------------------------------------------------------------------------

def test_the_world_backbone_tells_held_out_creatures_apart_in_any_scene(world):
    """The image the encoder reads must carry the creature: two renders of each of 16 held-out creatures in
    different scenes (background, pattern, place), matched by the backbone's pooled features."""
    from conceptkit.core.methods.concept_encoder.domain import _random_scene
    from conceptkit.core.world.vocabulary import HELDOUT_INSTANCE_SEEDS

    rng = np.random.default_rng(3)
    creatures = HELDOUT_INSTANCE_SEEDS[:16]
    first, second = ([_random_scene(rng, c, None).render(rng) for c in creatures] for _ in range(2))
    backbone = world_backbone(world)

    def features(images):
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        pooled = backbone.pooled(pixels)
        return torch.nn.functional.normalize(pooled - pooled.mean(0), dim=1)

    matched = (features(first) @ features(second).T).argmax(1) == torch.arange(16)
    assert matched.float().mean() >= 0.5  # chance: 1/16; the whole-scene VAE features matched 0.11


def test_tuning_changes_the_encoder_and_zero_steps_keeps_it(world, encoder, subject_image, concept):
    pixels = one_rgb_image(subject_image, world.default_size)
    untuned = tune_concept(world, encoder, world_backbone(world), pixels, "<c0>", TuneSettings(steps=0))
    weights = {k: v for k, v in untuned.group("e4t").items() if k.startswith("encoder.")}
    assert all(torch.equal(v, encoder.encoder.state_dict()[k[len("encoder."):]]) for k, v in weights.items())
    tuned = concept.group("e4t")
    assert any(not torch.equal(v, tuned[k]) for k, v in weights.items())
    assert concept.parameters["tuning_steps"] == 2 and untuned.parameters["tuning_steps"] == 0


@pytest.mark.parametrize("weights", ["offsets", "attention", "full"])
def test_tuning_with_the_unets_weights_keeps_what_it_changed_as_the_concepts_offsets(world, encoder, subject_image,
                                                                                    weights):
    """What tuning trains beside the encoder: the concept holds every weight it changed (the offsets' q/k/v,
    the attention projections, or every UNet weight) as one offset from the base; the model stays as it was, and
    the concept draws the tuned model's pictures."""
    before = {k: v.clone() for k, v in world.unet.state_dict().items()}
    pixels = one_rgb_image(subject_image, world.default_size)
    concept = tune_concept(world, encoder, world_backbone(world), pixels, "<c0>",
                           TuneSettings(steps=2, batch_size=2, weights=weights, learning_rate=1e-3))
    changed = {name.removeprefix("unet.") for name, delta in concept.deltas().items() if delta.abs().max() > 0}
    projections = {n for n in before if n.endswith(("to_q.weight", "to_k.weight", "to_v.weight"))}
    expected = {"offsets": projections, "attention": projections | {n for n in before if n.endswith("to_out.0.weight")},
                "full": {n for n, v in world.unet.named_parameters()}}[weights]
    assert changed == expected and concept.parameters["weights"] == weights
    assert all(torch.equal(v, world.unet.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_hooks for m in world.unet.modules())
    images = sample(apply_concept(world, concept), "a <c0> on the left, red background", steps=2, seed=0).images
    assert torch.isfinite(images).all()
    with pytest.raises(InputError, match="weights 'unet' is not one of offsets, attention, full"):
        tune_concept(world, encoder, world_backbone(world), pixels, "<c0>", TuneSettings(steps=1, weights="unet"))


def test_tuning_on_the_images_own_caption_learns_another_concept_and_a_caption_without_the_subject_is_refused(
        world, encoder, subject_image):
    pixels = one_rgb_image(subject_image, world.default_size)
    settings = TuneSettings(steps=1, batch_size=2, weights="offsets")
    plain = tune_concept(world, encoder, world_backbone(world), pixels, "<c0>", settings)
    caption = "a {trigger} on the left, red background"
    captioned = tune_concept(world, encoder, world_backbone(world), pixels, "<c0>",
                             dataclasses.replace(settings, caption=caption))
    assert captioned.parameters["caption"] == caption and plain.parameters["caption"] == ""
    assert not torch.equal(captioned.embeddings(0)[0], plain.embeddings(0)[0])
    with pytest.raises(InputError, match="does not say where the subject is; write \\{trigger\\}"):
        tune_concept(world, encoder, world_backbone(world), pixels, "<c0>",
                     dataclasses.replace(settings, caption="a creature on the left"))


def test_tuning_honours_cancel_and_leaves_the_model_as_it_was(world, encoder, subject_image):
    before = {k: v.clone() for k, v in world.unet.state_dict().items()}
    pixels = one_rgb_image(subject_image, world.default_size)
    with pytest.raises(Cancelled):
        tune_concept(world, encoder, world_backbone(world), pixels, "<c0>", TuneSettings(steps=5, batch_size=2),
                     cancel=lambda: True)
    assert all(torch.equal(v, world.unet.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_hooks for m in world.unet.modules())  # no offset hooks left behind


# --- pre-training -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_sd1(models_dir):
    return load_model(models_dir / "diffusers" / "tiny_sd1", device="cpu")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    folder = tmp_path_factory.mktemp("clip_vision")
    CLIPVisionModelWithProjection(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cats")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"cat{i}.png")
    return folder


def pretrain(model, clip_folder, folder, steps, checkpoint_dir=None, cancel=None):

    backbone = backbone_for(model, load_clip_vision(clip_folder))
    start = Pretrained.fresh(model, backbone, "cat", hidden=32)
    data = folder_domain(folder, model.default_size, PRETRAIN_TRIGGER)
    return pretrain_encoder(model, backbone, start, PretrainSettings(steps=steps, batch_size=2, checkpoint_every=2),
                            data, checkpoint_dir=checkpoint_dir, cancel=cancel)


def test_pretraining_on_a_folder_with_a_clip_vision_model_resumes_exactly(tiny_sd1, tiny_clip, class_folder, tmp_path):
    straight, _ = pretrain(tiny_sd1, tiny_clip, class_folder, 4)
    calls = {"n": 0}

    def cancel_at_third():
        calls["n"] += 1
        return calls["n"] == 3

    with pytest.raises(Cancelled):
        pretrain(tiny_sd1, tiny_clip, class_folder, 4, tmp_path / "run", cancel_at_third)
    resumed, result = pretrain(tiny_sd1, tiny_clip, class_folder, 4, tmp_path / "run")
    assert result.resumed_from == 2
    for a, b in zip(straight.encoder.state_dict().values(), resumed.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(straight.offsets.state_dict().values(), resumed.offsets.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert straight.steps == 4 and any(p.abs().sum() > 0 for p in straight.offsets.u)  # offsets trained


def test_pretraining_runs_under_accelerate_launch_with_averaged_gradients(models_dir, tiny_clip, class_folder,
                                                                           tmp_path):
    script = Path(__file__).parent / "helpers" / "accelerate_pretrain_encoder.py"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, str(script), str(models_dir / "diffusers" / "tiny_sd1"), str(tiny_clip),
                           str(class_folder), str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = (load_encoder(tmp_path / f"rank{i}.safetensors", load_model(models_dir / "diffusers" / "tiny_sd1"))
                     for i in (0, 1))
    for a, b in zip(first.encoder.state_dict().values(), second.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # each process drew its own batches; the averaged updates agree


def test_an_encoder_file_round_trips_and_tunes_a_concept_on_a_real_architecture(tiny_sd1, tiny_clip, class_folder,
                                                                               tmp_path):

    trained, _ = pretrain(tiny_sd1, tiny_clip, class_folder, 1)
    path = save_encoder(trained, tmp_path / "cats.safetensors")
    loaded = load_encoder(path, tiny_sd1)
    assert loaded.steps == 1 and loaded.class_word == "cat"
    backbone = backbone_for(tiny_sd1, load_clip_vision(tiny_clip))
    image = np.asarray(Image.open(next(class_folder.iterdir())))
    concept = tune_concept(tiny_sd1, loaded, backbone, one_rgb_image(image, tiny_sd1.default_size), "<my-cat>",
                           TuneSettings(steps=1, batch_size=2))
    images = sample(apply_concept(tiny_sd1, concept), "a photo of <my-cat> cat", steps=3, batch_size=2).images
    assert images.shape == (2, 32, 32, 3) and torch.isfinite(images).all()


# --- bad input ----------------------------------------------------------------------------------------------------

def test_an_encoder_for_another_model_family_is_refused_with_the_fix(tiny_sd1):
    with pytest.raises(InputError, match="Encoder for world models; the model is sd1.*pre-train"):
        load_encoder(EMBEDDED_ENCODER, tiny_sd1)


def test_a_real_model_without_a_clip_vision_model_is_refused_with_the_fix(tiny_sd1):
    with pytest.raises(InputError, match="needs a CLIP vision model.*Load CLIP Vision"):
        backbone_for(tiny_sd1, None)


def test_an_encoder_with_another_clip_vision_model_is_refused(tiny_sd1, tiny_clip, class_folder):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    trained, _ = pretrain(tiny_sd1, tiny_clip, class_folder, 1)
    other = clip_backbone(CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=24)).eval())
    with pytest.raises(InputError, match="takes 16 image features.*gives 24"):
        tune_concept(tiny_sd1, trained, other, torch.zeros(1, 3, 32, 32), "<my-cat>", TuneSettings(steps=0))


@pytest.mark.parametrize("image,problem", [
    (np.zeros((64, 64, 4), np.uint8), "RGBA"),
    (np.zeros((64, 64, 1), np.uint8), "grayscale"),
    (Image.new("L", (64, 64)), "'L'"),
    (torch.zeros(2, 64, 64, 3), "ONE image; this batch has 2"),
])
def test_an_image_that_is_not_one_rgb_image_is_refused_with_the_fix(image, problem):
    with pytest.raises(InputError, match=problem):
        one_rgb_image(image, 64)


def test_a_damaged_encoder_file_is_refused(world, tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(EMBEDDED_ENCODER.read_bytes()[:1000])
    from conceptkit.core.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="broken.safetensors"):
        load_encoder(path, world)


# --- nodes --------------------------------------------------------------------------------------------------------

def test_encoder_nodes_personalize_from_one_image_under_comfyuis_inference_mode():
    from conceptkit import NODE_CLASS_MAPPINGS as N

    with torch.inference_mode():  # ComfyUI executes every node inside inference mode, loaders included
        model = N["ConceptKitLoadModel"]().load("embedded", "cpu", "fp32", "auto")[0]
        image, _ = N["ConceptKitWorldSubject"]().render(subject=2, count=1, seed=0)
        (encoder,) = N["ConceptKitLoadConceptEncoder"]().load("world creatures (embedded)")
        (concept,) = N["ConceptKitConceptEncoder"]().encode(model, encoder, image, "<pet3>", tuning_steps=2, seed=0)
        (tuned,) = N["ConceptKitApplyConcept"]().apply(model, concept, 1.0)
        images = N["ConceptKitSample"]().generate(tuned, "a <pet3> creature", "", 0, 3, 5.0, "ddim", 0, 0, 2)[0]
    assert concept.method == "e4t" and concept.parameters["tuning_steps"] == 2 and torch.isfinite(images).all()
    with pytest.raises(InputError, match="ONE image"):
        N["ConceptKitConceptEncoder"]().encode(model, encoder, torch.cat([image, image]), "<pet3>", 0, 0)


def test_the_pretraining_node_resumes_after_a_cancel_and_writes_the_encoder(world, tmp_path, monkeypatch):
    from conceptkit import NODE_CLASS_MAPPINGS
    from conceptkit.nodes import comfy_adapter

    node = NODE_CLASS_MAPPINGS["ConceptKitPretrainConceptEncoder"]()
    args = dict(model=world, name="mine", class_word="creature", steps=4, batch_size=2, learning_rate=2e-4, seed=0,
                if_exists="overwrite", checkpoint_every=0, preview_share=0.0)

    def written(result) -> dict:
        path = Path(result["ui"]["text"][0])
        assert path.parent.name == "encoders" and result["result"][0].for_model(world).steps == 4
        return load_encoder(path, world).encoder.state_dict()

    monkeypatch.setenv("CONCEPTKIT_MODELS_DIR", str(tmp_path / "straight"))
    straight = written(node.pretrain(**args))
    monkeypatch.setenv("CONCEPTKIT_MODELS_DIR", str(tmp_path / "interrupted"))
    asked = iter(range(100))
    monkeypatch.setattr(comfy_adapter, "cancel_requested", lambda: next(asked) == 2)  # Cancel before step 2
    with pytest.raises(Cancelled, match="step 2 of 4"):
        node.pretrain(**args)
    assert not (tmp_path / "interrupted" / "conceptkit" / "encoders").exists()  # nothing written on Cancel
    monkeypatch.setattr(comfy_adapter, "cancel_requested", lambda: False)
    resumed = written(node.pretrain(**args))  # queued again: resumes at step 2
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert not list((tmp_path / "interrupted").rglob("step_*"))  # checkpoints gone; the result is kept


def test_the_encoders_unet_features_stop_at_the_mid_block_and_equal_a_whole_passes(world):
    """The empty-prompt pass the encoder reads skips the up-blocks (tuning's cost), and reads what a whole pass
    would have given."""
    from conceptkit.core.methods.concept_encoder.encoder import UnetFeatureTap, empty_prompt_features
    from conceptkit.core.model import encode_prompts, unet_denoiser

    noisy = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    timesteps, empty = torch.tensor([900, 100]), encode_prompts(world, ["", ""])
    ran = []
    hook = world.unet.up_blocks[0].register_forward_hook(lambda *args: ran.append(1))
    try:
        read = empty_prompt_features(world, noisy, timesteps, empty)
    finally:
        hook.remove()
    assert not ran
    whole = []
    with torch.no_grad(), UnetFeatureTap(world, lambda features, context: whole.append(features)).attached():
        unet_denoiser(world, 64, 64)(noisy, timesteps, empty)
    assert torch.equal(read, whole[-1])
