"""The few-shot training service and Lipschitz Finetune: exact resume, Cancel, the penalty's math, the
base model left as it was, and clear answers to bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from conceptkit.core.concepts import apply_concept, save_concept
from conceptkit.core.errors import Cancelled, InputError
from conceptkit.core.methods.lipschitz_finetune import finetune
from conceptkit.core.model import encode_text, load_model, unet_denoiser
from conceptkit.core.model.patches import patches_in_effect
from conceptkit.core.recipes import recipe_config, train_recipe
from conceptkit.core.sampling import CFG, sample
from conceptkit.core.training import (
    Companion,
    ImageReplay,
    OffsetPenalty,
    TrainConfig,
    class_captions,
    instance_captions,
    train_concept,
)
from conceptkit.core.training.run import RIDERS_AHEAD
from conceptkit.core.training.trainable import DenseOffset, LowRankOffset
from conceptkit.core.world.scenes import Scene, WorldObject

SUBJECT = 1_000_003
CAPTIONS = ["a {trigger} {class} on the left, blue background", "a {trigger} {class} on the right, yellow background",
            "a {trigger} {class} in the centre, white background"]


@pytest.fixture(scope="module")
def world():
    return load_model(device="cpu")


@pytest.fixture(scope="module")
def subject_images():
    rng = np.random.default_rng(0)
    scenes = [Scene(bg, "plain", (WorldObject(pos, instance=SUBJECT),)) for bg, pos in
              [("blue", "left"), ("yellow", "right"), ("white", "centre")]]
    return torch.from_numpy(np.stack([s.render(rng) for s in scenes])).float() / 255


def config(**changes) -> TrainConfig:
    base = TrainConfig(trigger="<c1>", class_word="creature", captions=CAPTIONS, steps=8, batch_size=2,
                       learning_rate=5e-3, rank=2)
    return dataclasses.replace(base, **changes)


def unet_snapshot(model):
    return {k: v.clone() for k, v in model.unet.state_dict().items()}


def same_tensors(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def right_half_replay(world, subject_images, teacher_weight: float) -> ImageReplay:
    """The subject images as a memory's pair composites: one drawn a step, the loss counting on the right half, the
    left half held to the teacher with `teacher_weight`."""
    images = subject_images.permute(0, 3, 1, 2) * 2 - 1
    latent = images.shape[-1] // world.vae_scale_factor
    masks = torch.zeros(len(images), 1, latent, latent)
    masks[..., latent // 2:] = 1
    captions = ["a creature on the left and a creature on the right, white background"] * len(images)
    return ImageReplay(images, captions, name="composites", masks=masks, count=1, teacher_weight=teacher_weight)


@pytest.mark.parametrize("trainable", ["lora", "full"])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(world, subject_images, tmp_path, trainable):
    whole = train_concept(world, subject_images, config(trainable=trainable), [OffsetPenalty(0.1)]).concept

    stop_at = iter(range(100))
    with pytest.raises(Cancelled, match="step 4 of 8"):
        train_concept(world, subject_images, config(trainable=trainable, checkpoint_every=4),
                      [OffsetPenalty(0.1)], checkpoint_dir=tmp_path, cancel=lambda: next(stop_at) == 4)
    assert (tmp_path / "step_4").is_dir()
    resumed = train_concept(world, subject_images, config(trainable=trainable, checkpoint_every=4),
                            [OffsetPenalty(0.1)], checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 4 and len(resumed.losses) == 8
    assert same_tensors(resumed.concept.tensors, whole.tensors)


def test_cancel_leaves_no_concept_file_the_model_as_it_was_and_a_checkpoint_to_resume(world, subject_images,
                                                                                        tmp_path):
    before = unet_snapshot(world)
    concepts, checkpoints = tmp_path / "concepts", tmp_path / "checkpoints"
    concepts.mkdir()
    steps_seen = []

    def cancel_at_3():
        return len(steps_seen) == 3

    with pytest.raises(Cancelled):
        result = finetune(world, subject_images, config(), checkpoint_dir=checkpoints, cancel=cancel_at_3,
                          progress=lambda step, total, preview: steps_seen.append(step))
        save_concept(result.concept, concepts / "c.safetensors")
    assert list(concepts.iterdir()) == []
    assert same_tensors(unet_snapshot(world), before)  # no LoRA layers left in, weights as they were
    resumed = finetune(world, subject_images, config(), checkpoint_dir=checkpoints)
    assert resumed.resumed_from == 3 and resumed.concept.kind == "lora"


def test_a_lipschitz_concept_changes_images_with_its_trigger_and_only_modestly_without(world, subject_images):
    result = finetune(world, subject_images, config(steps=30, learning_rate=1e-2, rank=4), lipschitz_lambda=1e-2)
    tuned = apply_concept(world, result.concept)
    with_trigger = "a <c1> creature on the right, red background"
    base = sample(world, "a creature on the right, red background", seed=0, steps=10, guidance=CFG(5.0)).images
    personal = sample(tuned, with_trigger, seed=0, steps=10, guidance=CFG(5.0)).images
    assert (personal - base).abs().mean() > 0.01
    assert result.concept.parameters["lambda"] == 1e-2 and result.concept.method == "lipschitz"
    projections = [n for n, _ in world.unet.named_modules() if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))]
    assert sorted(result.concept.lora_modules()) == sorted(f"unet.{n}" for n in projections)


def test_the_penalty_is_lambda_times_the_squared_offset_norms():
    gen = torch.Generator().manual_seed(0)
    down, up = torch.randn(3, 10, generator=gen), torch.randn(6, 3, generator=gen)
    dense = torch.randn(5, 4, 3, 3, generator=gen)
    offsets = {"a": LowRankOffset(down, up, 0.5), "b": DenseOffset(dense)}
    run = type("Run", (), {"trainable": type("T", (), {"offsets": lambda self: offsets})()})()
    expected_f = 0.1 * ((up @ down * 0.5).pow(2).sum() + dense.pow(2).sum())
    torch.testing.assert_close(OffsetPenalty(0.1)(run, 0, gen), expected_f)
    spectral = OffsetPenalty(0.1, "spectral", power_iterations=1000)
    expected_s = 0.1 * (torch.linalg.matrix_norm(up @ down * 0.5, ord=2) ** 2
                        + torch.linalg.matrix_norm(dense.reshape(5, -1), ord=2) ** 2)
    torch.testing.assert_close(spectral(run, 0, gen), expected_s, rtol=1e-4, atol=1e-5)


def test_bad_images_are_refused_or_handled_as_documented(world, subject_images):
    short = config(steps=1, captions=None)
    with pytest.raises(InputError, match="no images"):
        train_concept(world, torch.zeros(0, 64, 64, 3), short)
    with pytest.raises(InputError, match="image 1 is 1x1"):
        train_concept(world, torch.rand(1, 1, 1, 3), short)
    nan = subject_images.clone()
    nan[1, 5, 5, 0] = float("nan")
    with pytest.raises(InputError, match="image 2 contains NaN"):
        train_concept(world, nan, short)
    rgba = torch.cat([subject_images[:1], torch.ones(1, 64, 64, 1)], dim=-1)
    gray = subject_images[1:2].mean(-1, keepdim=True)
    wide = torch.rand(80, 120, 3)
    for images in (rgba, gray, [subject_images[0], wide]):  # handled: alpha on white, grey to RGB, centre crop
        assert train_concept(world, images, short).concept.kind == "lora"
    with pytest.raises(InputError, match="2 captions were given for 3 images"):
        train_concept(world, subject_images, config(captions=CAPTIONS[:2]))


def test_bad_words_are_refused(world, subject_images):
    with pytest.raises(InputError, match="'red' is already a word"):
        train_concept(world, subject_images, config(trigger="red"))
    with pytest.raises(InputError, match="one word"):
        train_concept(world, subject_images, config(trigger="my dog"))
    with pytest.raises(InputError, match="does not contain the trigger"):
        train_concept(world, subject_images, config(captions=["a creature"] * 3))


@pytest.mark.parametrize("recipe,named", [("textual_inversion", "a <c1> on the left"),
                                          ("dreambooth_lora", "a <c1> creature on the left")])
def test_captions_name_the_subject_by_one_rule_and_never_say_the_class_word_twice(recipe, named):
    """A trigger that starts at the class word's vector replaces the class word; a fixed rare one stands beside it."""
    resolved = recipe_config(recipe, config(captions=["a {trigger} on the left, blue background"] * 3))
    assert instance_captions(resolved, 3)[0] == f"{named}, blue background"
    assert class_captions(instance_captions(resolved, 3), resolved)[0] == "a creature on the left, blue background"
    legacy = dataclasses.replace(resolved, captions=[CAPTIONS[0]] * 3)  # "a {trigger} {class} on the left, ..."
    assert instance_captions(legacy, 3) == instance_captions(resolved, 3)


def test_subjects_trained_together_are_each_captioned_by_their_own_trigger_and_refused_when_miscounted(world):
    companion = Companion("<c2>", "cat", ("a {trigger} in the centre, red background",) * 2)
    joint = recipe_config("dreambooth_lora", config(captions=["a {trigger} on the left, blue background"],
                                                    companions=(companion,)))
    assert instance_captions(joint, 3) == ["a <c1> creature on the left, blue background",
                                           "a <c2> cat in the centre, red background",
                                           "a <c2> cat in the centre, red background"]
    assert class_captions(instance_captions(joint, 3), joint)[:2] == ["a creature on the left, blue background",
                                                                     "a cat in the centre, red background"]
    with pytest.raises(InputError, match="give the run's own subject's images first"):
        instance_captions(joint, 2)
    with pytest.raises(InputError, match="share a trigger"):
        train_concept(world, torch.zeros(3, 64, 64, 3), dataclasses.replace(
            joint, companions=(dataclasses.replace(companion, trigger="<c1>"),)))


@pytest.mark.parametrize("recipe", ["dreambooth_lora", "textual_inversion"])
def test_a_joint_run_gives_one_concept_with_every_trigger_and_resumes_exactly(world, subject_images, tmp_path,
                                                                                recipe):
    """Two subjects in one run (multi-concept DreamBooth): one concept whose triggers both draw, the companion's
    vector trained where the recipe trains vectors, and a checkpoint that holds it."""
    joint = config(captions=CAPTIONS[:2], companions=(Companion("<c2>", "creature", (CAPTIONS[2],)),))
    whole = train_recipe(world, subject_images, joint, recipe).concept
    assert [t.word for t in whole.triggers] == ["<c1>", "<c2>"]
    assert {"embedding.0.te0", "embedding.1.te0"} <= set(whole.tensors)
    if recipe == "textual_inversion":
        start = world.text_encoders[0].get_input_embeddings().weight[
            world.tokenizers[0].convert_tokens_to_ids("creature</w>")]
        assert not torch.allclose(whole.tensors["embedding.1.te0"][0], start)  # the companion's vector trained
    stop_at = iter(range(100))
    with pytest.raises(Cancelled):
        train_recipe(world, subject_images, dataclasses.replace(joint, checkpoint_every=4), recipe,
                     checkpoint_dir=tmp_path, cancel=lambda: next(stop_at) == 4)
    resumed = train_recipe(world, subject_images, dataclasses.replace(joint, checkpoint_every=4), recipe,
                           checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 4 and same_tensors(resumed.concept.tensors, whole.tensors)
    tuned = apply_concept(world, whole)
    words = {"dreambooth_lora": "{} creature", "textual_inversion": "{}"}[recipe]
    prompt = f"a {words.format('<c1>')} on the left and a {words.format('<c2>')} on the right, blue background"
    assert torch.isfinite(sample(tuned, prompt, seed=0, steps=2, guidance=CFG(3.0)).images).all()


def test_a_trigger_beside_punctuation_is_found_and_swapped_for_the_class_word():
    """"a photo of <t>, smiling" names the subject: accepted, and its class caption says the class word there."""
    resolved = recipe_config("textual_inversion", config(captions=["pekizo {trigger}, blue background",
                                                                   "a photo of ({trigger}).", "{trigger}s here"]))
    with pytest.raises(InputError, match="caption 3 .* does not contain the trigger"):
        instance_captions(resolved, 3)
    resolved = dataclasses.replace(resolved, captions=resolved.captions[:2] * 2)
    assert class_captions(instance_captions(resolved, 4), resolved)[:2] == [
        "pekizo creature, blue background", "a photo of (creature)."]


def test_augmentation_that_would_contradict_a_caption_is_off_by_default_and_warned_about(world, subject_images,
                                                                                        caplog):
    assert TrainConfig(trigger="<t>", class_word="dog").augment_scale == 1.0 and not TrainConfig("<t>", "dog").flip
    with caplog.at_level("WARNING", logger="conceptkit"):
        instance_captions(config(flip=True), 3)
    assert "2 of 3 captions say where the subject is, which mirroring (flip) contradict (caption 1: " \
           "'a <c1> creature on the left, blue background' says left)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="conceptkit"):
        instance_captions(config(captions=["a {trigger}, blue background"] * 3, augment_scale=0.8, flip=True), 3)
    assert not caplog.text
    with pytest.raises(InputError, match="augment_scale must be in"):
        train_concept(world, subject_images, config(augment_scale=0.0))


def test_accelerate_launch_trains_on_several_processes_with_averaged_gradients(models_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conceptkit.core.concepts import load_concept

    script = Path(__file__).parent / "helpers" / "accelerate_train.py"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, str(script), str(models_dir / "diffusers" / "tiny_sd1"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "process 0 of 2 done" in done.stdout and "process 1 of 2 done" in done.stdout
    first, second = (load_concept(tmp_path / f"rank{i}.safetensors") for i in (0, 1))
    assert same_tensors(first.tensors, second.tensors)  # each drew its own batches; the averaged updates agree
    alone = finetune(load_model(models_dir / "diffusers" / "tiny_sd1", device="cpu"),
                     torch.rand(3, 32, 32, 3, generator=torch.Generator().manual_seed(0)),
                     TrainConfig(trigger="<t5>", class_word="cat", steps=3, batch_size=2, rank=2)).concept
    assert not same_tensors(alone.tensors, first.tensors)  # two processes saw twice the data


@pytest.mark.parametrize("method,kind", [("dreambooth_prior", "lora"), ("dreambooth_full_prior", "delta")])
def test_prior_preservation_makes_class_images_once_and_reuses_them(world, subject_images, tmp_path, method, kind):
    result = train_recipe(world, subject_images, config(steps=1), method, class_image_count=2,
                          class_cache_dir=tmp_path)
    assert result.concept.kind == kind and result.concept.parameters["class_images"] == 2
    made = sorted(tmp_path.rglob("*.png"))
    assert len(made) == 2
    stamps = [p.stat().st_mtime_ns for p in made]
    again = train_recipe(world, subject_images, config(steps=1), method, class_image_count=2,
                         class_cache_dir=tmp_path)
    assert [p.stat().st_mtime_ns for p in sorted(tmp_path.rglob("*.png"))] == stamps
    assert again.losses == pytest.approx(result.losses, rel=1e-5)  # the same pixels whether made or read


def test_prior_preservation_puts_class_images_in_the_instance_pass_and_minimizes_what_two_passes_did(
        world, subject_images, tmp_path, monkeypatch):
    """As the diffusers DreamBooth script: one UNet call per step on instance and class images together, with the
    loss two calls gave."""
    from conceptkit.core.training import DenoisingObjective

    calls = []
    hook = world.unet.register_forward_pre_hook(lambda module, args: calls.append((len(args[0]),
                                                                                    torch.is_grad_enabled())))
    try:
        shared = train_recipe(world, subject_images, config(steps=3), "dreambooth_prior", class_image_count=2,
                              class_cache_dir=tmp_path)
    finally:
        hook.remove()
    assert [size for size, trains in calls if trains] == [4] * 3  # 2 instance + 2 class images a step
    monkeypatch.setattr(DenoisingObjective, "shares_pass", False)
    apart = train_recipe(world, subject_images, config(steps=3), "dreambooth_prior", class_image_count=2,
                         class_cache_dir=tmp_path)
    assert shared.losses == pytest.approx(apart.losses, rel=1e-4)
    without = train_recipe(world, subject_images, config(steps=3), "dreambooth_lora")
    assert without.losses[0] != pytest.approx(shared.losses[0], rel=1e-2)  # the class images' loss is in it


def test_a_few_images_are_encoded_once_per_run_with_the_loss_encoding_every_batch_gave(world, subject_images,
                                                                                      monkeypatch):
    """Unaugmented, every batch draws from the same images: their latents are encoded once, not at every step (a
    fifth of a step's time here), and the run learns what it did when each batch was encoded; crops change the
    images at every step, so then each batch is encoded."""
    from conceptkit.core.training import FewShotImages

    encodes = []
    encode = world.vae.encode
    monkeypatch.setattr(world.vae, "encode", lambda x, *a, **k: encodes.append(len(x)) or encode(x, *a, **k))
    once = train_concept(world, subject_images, config(steps=4))
    assert encodes == [len(subject_images)]
    encodes.clear()
    train_concept(world, subject_images, config(steps=4, augment_scale=0.9, captions=["a {trigger} {class}"] * 3))
    assert encodes == [2] * 4  # the batch size, at every step
    drawn = FewShotImages.batch
    monkeypatch.setattr(FewShotImages, "batch", lambda *a: dataclasses.replace(drawn(*a), posterior=None))
    every_batch = train_concept(world, subject_images, config(steps=4))
    assert once.losses == pytest.approx(every_batch.losses, rel=1e-5)
    assert all(torch.allclose(once.concept.tensors[k], every_batch.concept.tensors[k], atol=1e-6)
               for k in once.concept.tensors)


def test_textual_inversion_changes_only_the_trigger_vector(world, subject_images):
    concept = train_recipe(world, subject_images, config(steps=2), "textual_inversion").concept
    assert concept.kind == "embedding" and set(concept.tensors) == {"embedding.0.te0"}


def test_an_interrupt_from_the_progress_display_checkpoints_the_last_step(world, subject_images, tmp_path):
    class ProcessingInterrupted(Exception):  # what ComfyUI's progress bar raises when Cancel is pressed
        pass

    def progress(step, total, preview):
        if step == 2:
            raise ProcessingInterrupted

    before = unet_snapshot(world)
    with pytest.raises(ProcessingInterrupted):
        train_concept(world, subject_images, config(), checkpoint_dir=tmp_path, progress=progress)
    assert (tmp_path / "step_2").is_dir() and same_tensors(unet_snapshot(world), before)
    assert train_concept(world, subject_images, config(), checkpoint_dir=tmp_path).resumed_from == 2


def test_a_full_fine_tune_records_the_fingerprint_of_the_untouched_base(subject_images):
    fresh = load_model(device="cpu")  # no fingerprint computed before training changes its weights
    concept = train_concept(fresh, subject_images, config(trainable="full", steps=2)).concept
    assert concept.base_fingerprint == load_model(device="cpu").fingerprint()


class PassCounter:
    """Denoiser passes over one sample, split by whether a preview was rendering (a backward pass counts as two
    forward passes, as the preview budget assumes)."""

    def __init__(self, model):
        self.previewing, self.preview, self.training, self.shown = False, 0, 0, []
        self.handle = model.unet.register_forward_hook(self.count)

    def count(self, module, args, output):
        samples = args[0].shape[0]
        if self.previewing:
            self.preview += samples
        else:
            self.training += samples * (3 if torch.is_grad_enabled() else 1)

    def progress(self, step, total, preview):
        self.previewing = True
        try:
            if preview() is not None:
                self.shown.append(step)
        finally:
            self.previewing = False


@pytest.mark.parametrize("share", [0.1, 0.0])
def test_previews_cost_at_most_their_share_of_the_training(world, subject_images, share):
    from conceptkit.core.recipes import TrainingPreview

    counter = PassCounter(world)
    try:
        finetune(world, subject_images, config(steps=20), preview=TrainingPreview("a <c1> creature", 0, steps=2),
                 preview_share=share, progress=counter.progress)
    finally:
        counter.handle.remove()
    assert counter.preview <= share * counter.training
    assert len(counter.shown) == (3 if share else 0)  # after steps 7, 14 and 20


def test_a_diverged_run_is_never_checkpointed_and_says_how_to_start_over(world, subject_images, tmp_path):
    from conceptkit.core.errors import Diverged

    wild = config(learning_rate=1e9, steps=30, checkpoint_every=1)
    with pytest.raises(Diverged, match="diverged at step") as failed:
        train_concept(world, subject_images, wild, checkpoint_dir=tmp_path)
    assert "Lower the learning rate" in str(failed.value)
    for checkpoint in tmp_path.glob("step_*"):
        state = load_file(str(checkpoint / "state.safetensors"))
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), checkpoint.name


def test_stray_things_in_a_checkpoint_folder_are_neither_resumed_from_nor_removed(world, subject_images, tmp_path):
    whole = train_concept(world, subject_images, config(), [OffsetPenalty(0.1)]).concept
    stop_at = iter(range(100))
    with pytest.raises(Cancelled):
        train_concept(world, subject_images, config(checkpoint_every=4), [OffsetPenalty(0.1)], checkpoint_dir=tmp_path,
                      cancel=lambda: next(stop_at) == 4)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    (tmp_path / "step_x9").mkdir()  # looks like a checkpoint, is not one
    (tmp_path / "step_6").mkdir()  # a checkpoint without its state file
    (tmp_path / "step_9").write_text("a file")
    resumed = train_concept(world, subject_images, config(checkpoint_every=4), [OffsetPenalty(0.1)],
                            checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 4 and same_tensors(resumed.concept.tensors, whole.tensors)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "step_6", "step_9", "step_x9"]  # its own went
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_a_masked_replay_that_holds_the_teacher_keeps_the_rest_of_its_images_as_the_model_drew_them(
        world, subject_images):
    """A replay whose loss is masked to one half (a memory's pair composite: the new concept's half) trains only
    there; with `teacher_weight` the other half is held to the model before the run, so what it shows (the earlier
    concept) is predicted as the starting model predicted it, where without the hold it moves with the training."""
    composites = right_half_replay(world, subject_images, 0.0)
    images, captions = composites.images, composites.captions
    latent = images.shape[-1] // world.vae_scale_factor
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        clean = world.vae.encode(images).latent_dist.mean * world.vae.config.scaling_factor
        t = torch.full((len(images),), 400)
        scheduler = DDPMScheduler.from_config(world.scheduler_config)
        noisy = scheduler.add_noise(clean, torch.randn(clean.shape, generator=g), t)

    def left_half(model):
        with torch.no_grad(), patches_in_effect(model):
            size = images.shape[-1]
            return unet_denoiser(model, size, size)(noisy, t, encode_text(model, captions))[..., : latent // 2]

    before = left_half(world)
    moved = {}
    for weight in (0.0, 10.0):
        replay = right_half_replay(world, subject_images, weight)
        concept = train_concept(world, subject_images, config(steps=10, learning_rate=1e-2), [replay]).concept
        moved[weight] = float((left_half(apply_concept(world, concept)) - before).pow(2).mean())
    assert moved[10.0] < 0.5 * moved[0.0]
    with pytest.raises(InputError, match="give masks"):
        ImageReplay(images, captions, teacher_weight=1.0)


def test_the_teacher_answers_a_block_of_steps_in_one_call_and_a_run_resumed_inside_a_block_ends_the_same(
        world, subject_images, tmp_path):
    """A taught rider's samples (a memory's rehearsal and hold) are drawn RIDERS_AHEAD steps at a time and the
    teacher predicts them all in one call, as the model's weights are read once for the block: 20 steps cost two
    teacher calls, not 20. A run cancelled inside a block and queued again ends with the weights of one that ran
    through."""
    replay = right_half_replay(world, subject_images, 1.0)

    calls = []
    hook = world.unet.register_forward_pre_hook(lambda module, args: calls.append((len(args[0]),
                                                                                    torch.is_grad_enabled())))
    try:
        whole = train_concept(world, subject_images, config(steps=20), [replay]).concept
    finally:
        hook.remove()
    assert [size for size, trains in calls if not trains] == [RIDERS_AHEAD, 20 - RIDERS_AHEAD]
    assert [size for size, trains in calls if trains] == [2 + 1] * 20  # the batch and its composite, one pass
    stop_at = iter(range(100))
    with pytest.raises(Cancelled):
        train_concept(world, subject_images, config(steps=20, checkpoint_every=6), [replay], checkpoint_dir=tmp_path,
                      cancel=lambda: next(stop_at) == 6)
    resumed = train_concept(world, subject_images, config(steps=20, checkpoint_every=6), [replay],
                            checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 6 and same_tensors(resumed.concept.tensors, whole.tensors)


def test_cancel_is_asked_between_the_teachers_calls_of_a_block_and_the_run_resumes_as_it_would_have_run(
        world, subject_images, tmp_path, monkeypatch):
    """A block's teacher work is many calls on a large model (SD1.5's latents: 3 samples a call, 16 calls a block):
    Cancel is asked between them, so it stops the run inside the block, and the run queued again ends with the
    weights of one that ran through."""
    from conceptkit.core.training import objective, run

    monkeypatch.setattr(objective, "TEACHER_PIXELS", 16 * 16)  # one sample a call here
    monkeypatch.setattr(run, "RIDERS_AHEAD", 4)  # 4 calls a block
    settings = config(steps=8, checkpoint_every=4)
    replay = right_half_replay(world, subject_images, 1.0)

    whole = train_concept(world, subject_images, settings, [replay]).concept
    taught = []
    hook = world.unet.register_forward_pre_hook(lambda module, args: None if torch.is_grad_enabled()
                                                else taught.append(len(args[0])))
    try:
        with pytest.raises(Cancelled, match="step 4 of 8"):
            train_concept(world, subject_images, settings, [replay], checkpoint_dir=tmp_path,
                          cancel=lambda: len(taught) >= 4 + 2)
    finally:
        hook.remove()
    assert len(taught) == 4 + 2  # the second block's last two calls never ran
    resumed = train_concept(world, subject_images, settings, [replay], checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 4 and same_tensors(resumed.concept.tensors, whole.tensors)
