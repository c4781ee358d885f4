"""Concept Memory (L2DM): concepts learned one after another into a crash-safe, versioned memory; the consolidated
weights are the exact sum of the concepts' offsets (one joined LoRA for a LoRA memory); kill -9, a second writer
and bad input never lose or change what the memory held."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conceptkit import NODE_CLASS_MAPPINGS
from conceptkit.core.concepts import Concept, Trigger, apply_concept, load_concept
from conceptkit.core.errors import ConceptKitError, InputError
from conceptkit.core.methods.concept_memory import (
    LEARNING_RATES,
    TRAINS,
    LearnSettings,
    MemoryBank,
    MemoryStore,
    consolidate,
    learn,
    memory_model,
)
from conceptkit.core.methods.concept_memory.composites import pair_composites
from conceptkit.core.methods.concept_memory.learning import bank_features, refresh_bank, without
from conceptkit.core.model import EMBEDDED, load_model
from conceptkit.core.model.image_features import backbone_for
from conceptkit.core.model.patches import patches_in_effect
from conceptkit.core.sampling import sample
from conceptkit.core.training import prepare_images
from conceptkit.core.world.subjects import training_renders

TINY = LearnSettings(steps=4, candidates=2, keep=1)
HELPER = Path(__file__).parent / "helpers" / "memory_writer.py"


@pytest.fixture(scope="module")
def world():
    return load_model(EMBEDDED)


def subject(index: int):
    images, captions = training_renders(index, 4)
    return torch.from_numpy(images).float() / 255, captions


@pytest.fixture(scope="module")
def two_concepts(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("memories")
    store = MemoryStore.open_or_create(root, "pets", world)
    for k, index in enumerate((10, 11)):
        images, captions = subject(index)
        learn(store, world, images, f"<p{k}>", "creature", TINY, captions=captions)
    return store


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_each_learned_concept_is_a_new_version_holding_every_concept_so_far(two_concepts):
    info = two_concepts.manifest()
    assert info["current"] == 2
    assert [[c["trigger"] for c in v["concepts"]] for v in info["versions"]] == [["<p0>"], ["<p0>", "<p1>"]]
    state = two_concepts.current()
    assert state.triggers == ["<p0>", "<p1>"]
    assert state.bank.owners == ["<p0>", "<p1>"]  # one kept sample per concept, scored against the other
    assert set(state.bank.features) == {"<p0>", "<p1>"}


def test_the_memory_applies_as_one_concept_with_both_triggers_and_both_offsets(world, two_concepts):
    concept = two_concepts.current().concept
    first = load_concept(two_concepts.folder / "v0001" / "concept.safetensors")  # the memory of <p0> alone
    name, offset = next((n, d) for n, d in concept.deltas().items() if n.endswith("attn2.to_k.weight"))
    weight = world.unet.get_parameter(name.removeprefix("unet."))
    base = weight.detach().clone()
    assert not torch.allclose(offset, first.deltas()[name])  # learning <p1> moved the weights further
    with patches_in_effect(apply_concept(world, concept)) as state:
        assert {row.trigger for row in state.tokens} >= {"<p0>", "<p1>"}
        assert torch.allclose(weight, base + offset)
    assert torch.equal(weight, base)


def test_two_concepts_of_one_class_are_told_apart_by_their_triggers(world, two_concepts):
    # each concept's trigger has its own trained vector: "a <p0> creature" and "a <p1> creature" are not the
    # same prompt to the model (with the class word's vector they encoded alike, and learning <p1> rewrote <p0>)
    concept = two_concepts.current().concept
    first, second = concept.embeddings(0)[0], concept.embeddings(1)[0]
    assert not torch.allclose(first, second)
    memory = memory_model(world, two_concepts, artist=False)
    first_image, second_image = (sample(memory, f"a {t} creature", seed=3, steps=6).images for t in ("<p0>", "<p1>"))
    assert (first_image - second_image).abs().mean() > 0.01


def test_the_bank_grows_by_what_is_new_and_keeps_the_samples_an_earlier_concept_was_fresh_in(world, monkeypatch):
    """Refreshing after a new concept samples candidates for the new one only (learning the fifth concept costs
    what the first did); an earlier concept keeps its samples, and one whose prompts changed is drawn again."""
    import conceptkit.core.methods.concept_memory.learning as learning

    images, _ = subject(10)
    pixels = prepare_images(images, world.default_size)
    backbone = backbone_for(world, None, "Concept Memory")
    old, new = "a <p0> creature on the left, red background", "a <p1> creature on the right, blue background"
    features = bank_features(backbone, pixels[:2])
    held = MemoryBank({"<p0>": features[0], "<p1>": features[1]}, {"<p0>": [old], "<p1>": [new]}, pixels[:1],
                      [old], ["<p0>"], backbone.name)
    drawn = []
    real_sample = learning.sample
    monkeypatch.setattr(learning, "sample", lambda model, prompts, **kw: drawn.extend(prompts) or
                        real_sample(model, prompts, **kw))
    refreshed = refresh_bank(world, backbone, held, TINY)
    assert drawn == [new] * TINY.candidates
    assert torch.equal(refreshed.images[:1], pixels[:1]) and refreshed.owners == ["<p0>", "<p1>"]
    assert refreshed.image_prompts == [old, new]
    changed = replace(refreshed, prompts={**refreshed.prompts, "<p0>": ["a <p0> creature at the top, red background"]})
    drawn.clear()
    again = refresh_bank(world, backbone, changed, TINY)
    assert drawn == ["a <p0> creature at the top, red background"] * TINY.candidates
    assert again.image_prompts == [new, "a <p0> creature at the top, red background"]


def test_a_later_concept_trains_in_one_pass_a_step_with_its_rehearsal_riding_along(world, tmp_path):
    """Learning concept k costs one UNet call per step on the new images and `rehearsal_batch` bank samples
    together, plus the teacher's predictions of the bank samples (16 steps' in one call): not a second pass (concept 5
    costs about what 1 did)."""
    store = MemoryStore.open_or_create(tmp_path, "costs", world)
    before = {k: v.clone() for k, v in world.unet.state_dict().items()}
    calls = []
    hook = world.unet.register_forward_pre_hook(lambda module, args: calls.append((len(args[0]),
                                                                                    torch.is_grad_enabled())))
    sizes = []
    try:
        for k, index in enumerate((10, 11)):
            images, captions = subject(index)
            calls.clear()
            learn(store, world, images, f"<p{k}>", "creature", TINY, captions=captions)
            sizes.append([size for size, trains in calls if trains])
    finally:
        hook.remove()
    assert sizes[0] == [TINY.batch_size] * TINY.steps
    assert sizes[1] == [TINY.batch_size + TINY.rehearsal_batch] * TINY.steps
    assert store.current().triggers == ["<p0>", "<p1>"]
    # the memory's LoRA was folded into the weights while concept 2 trained, and taken out exactly
    assert all(torch.equal(v, before[k]) for k, v in world.unet.state_dict().items())


def test_a_concept_whose_captions_say_a_side_is_learned_beside_the_earlier_ones(world, two_concepts):
    """Pair composites: each new image whose caption says a side keeps its half, the memory draws an earlier
    concept (in turn) on the other half, the pair caption names the left or upper one first, and the loss mask
    covers the new concept's half only; captions without a side give none."""
    state = two_concepts.current()
    memory = apply_concept(world, state.concept)
    images, _ = subject(12)
    pixels = prepare_images(images, world.default_size)
    captions = ["a {trigger} on the right, white background", "a {trigger} in the centre, red background",
                "a {trigger} at the top, blue striped background"]
    made = pair_composites(memory, pixels[:3], captions, [("<p0>", "creature"), ("<p1>", "creature")], seed=0)
    assert made.captions == ["a <p0> creature on the left and a {trigger} on the right, white background",
                             "a {trigger} at the top and a <p1> creature at the bottom, blue striped background"]
    right, top = made.images
    assert torch.equal(right[:, :, 32:], pixels[0][:, :, 32:]) and not torch.allclose(right[:, :, :32],
                                                                                       pixels[0][:, :, :32])
    assert torch.equal(top[:, :32], pixels[2][:, :32]) and not torch.allclose(top[:, 32:], pixels[2][:, 32:])
    latent = world.default_size // world.vae_scale_factor
    assert made.masks.shape == (2, 1, latent, latent)
    assert made.masks[0, 0, :, latent // 2:].all() and not made.masks[0, 0, :, :latent // 2].any()
    assert made.masks[1, 0, :latent // 2].all() and not made.masks[1, 0, latent // 2:].any()
    assert pair_composites(memory, pixels[:1], captions[1:2], [("<p0>", "creature")], seed=0) is None
    assert pair_composites(world, pixels[:1], captions[:1], [], seed=0) is None


def test_the_offset_bound_keeps_prompts_without_a_trigger_closer_to_the_base_model(world, tmp_path):
    images, captions = subject(12)
    prompts = ["a creature on the left, blue background", "a creature at the top, yellow background"]
    base = sample(world, prompts, seed=0, steps=8).images
    moved = {}
    for penalty in (0.0, 1e3):
        store = MemoryStore.open_or_create(tmp_path / str(penalty), "bound", world)
        settings = replace(TINY, steps=10, offset_penalty=penalty)
        state = learn(store, world, images, "<b0>", "creature", settings, captions=captions)
        offsets = [offset.norm() ** 2 for offset in state.concept.deltas().values()]
        drawn = sample(memory_model(world, store, artist=False), prompts, seed=0, steps=8).images
        moved[penalty] = (float(sum(offsets)) ** 0.5, float((drawn - base).abs().mean()))
        assert store.learned_by("<b0>")["offset_penalty"] == penalty
    assert moved[1e3][0] < 0.5 * moved[0.0][0]  # the weights move less ...
    assert moved[1e3][1] < moved[0.0][1]  # ... and so do images of prompts that name no concept


def test_consolidation_joins_two_loras_exactly():
    g = torch.Generator().manual_seed(0)

    def lora_concept(word, rank, alpha):
        tensors = {"lora.unet.a.down": torch.randn(rank, 6, generator=g),
                   "lora.unet.a.up": torch.randn(5, rank, generator=g),
                   "embedding.0.te0": torch.randn(1, 8, generator=g)}
        return Concept(word, "test", "world", "f", (Trigger(word, "creature"),), tensors, rank, alpha)

    old, new = lora_concept("<a>", 2, 1.0), lora_concept("<b>", 3, 6.0)
    merged = consolidate(consolidate(None, old, "m"), new, "m")
    down, up = merged.lora_modules()["unet.a"]
    expected = sum(c.lora_scale * u @ d for c in (old, new) for d, u in [c.lora_modules()["unet.a"]])
    assert torch.allclose(merged.lora_scale * up @ down, expected, atol=1e-5)
    assert [t.word for t in merged.triggers] == ["<a>", "<b>"]
    assert torch.equal(merged.embeddings(1)[0], new.embeddings(0)[0])


def test_consolidation_sums_weight_offsets_and_takes_one_out_exactly():
    g = torch.Generator().manual_seed(0)

    def offset_concept(word):
        tensors = {"delta.unet.a.weight": torch.randn(5, 6, generator=g),
                   "embedding.0.te0": torch.randn(1, 8, generator=g)}
        return Concept(word, "test", "world", "f", (Trigger(word, "creature"),), tensors)

    concepts = [offset_concept(w) for w in ("<a>", "<b>", "<c>")]
    merged = None
    for concept in concepts:
        merged = consolidate(merged, concept, "m")
    assert torch.allclose(merged.deltas()["unet.a.weight"], sum(c.deltas()["unet.a.weight"] for c in concepts))
    kept = without(merged, "<b>", [])
    assert [t.word for t in kept.triggers] == ["<a>", "<c>"]
    assert torch.equal(kept.embeddings(1)[0], concepts[2].embeddings(0)[0])
    assert torch.equal(kept.deltas()["unet.a.weight"], consolidate(consolidate(None, concepts[0], "m"), concepts[2],
                                                                   "m").deltas()["unet.a.weight"])
    with pytest.raises(InputError, match="cannot join"):
        lora = {"lora.unet.a.down": torch.ones(1, 6), "lora.unet.a.up": torch.ones(5, 1)}
        consolidate(merged, Concept("<l>", "test", "world", "f", (Trigger("<l>", "creature"),), lora, 1, 1.0), "m")


def test_a_memory_keeps_what_it_trains_and_one_made_before_trains_were_recorded_trains_lora(world, tmp_path):
    MemoryStore.open_or_create(tmp_path, "small", world, "lora")
    with pytest.raises(InputError, match="trains lora .*set trains to lora, or use a new memory name"):
        MemoryStore.open_or_create(tmp_path, "small", world, "full")
    with pytest.raises(InputError, match="trains 'everything' is not one of full, attention, lora"):
        MemoryStore.open_or_create(tmp_path, "other", world, "everything")
    manifest = tmp_path / "small" / "manifest.json"
    info = json.loads(manifest.read_text())
    del info["trains"]
    manifest.write_text(json.dumps(info))
    assert MemoryStore.open_or_create(tmp_path, "small", world, "lora").trains() == "lora"
    assert set(LEARNING_RATES) == set(TRAINS)


def test_kill_9_during_learning_leaves_the_previous_version_loadable_and_complete(world, tmp_path):
    store = MemoryStore.open_or_create(tmp_path, "pets", world)
    images, captions = subject(12)
    learn(store, world, images, "<p0>", "creature", TINY, captions=captions)
    before = snapshot(store.folder)
    process = subprocess.Popen([sys.executable, str(HELPER), "learn", str(tmp_path), "pets", "13", "<p1>", "400"],
                               stdout=subprocess.PIPE, text=True)
    for line in process.stdout:  # training has begun: the memory is locked and being written
        if line.startswith("training 2"):
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (store.folder / "lock").exists()  # the dead writer's lock is left behind ...
    state = store.current()
    assert state.version == 1 and state.triggers == ["<p0>"]
    assert snapshot(store.folder) == {**before, "lock": (store.folder / "lock").read_bytes()}  # nothing else changed
    images, captions = subject(13)
    learn(store, world, images, "<p1>", "creature", TINY, captions=captions)  # ... and taken over by the next writer
    assert store.current().triggers == ["<p0>", "<p1>"]
    assert not (store.folder / "lock").exists()


def test_a_second_writer_waits_then_fails_with_a_clear_message(world, tmp_path):
    store = MemoryStore.open_or_create(tmp_path, "pets", world)
    process = subprocess.Popen([sys.executable, str(HELPER), "hold", str(tmp_path), "pets", "30"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().startswith("holding")
        with pytest.raises(InputError, match=f"being written by another process \\(pid {process.pid}\\); wait"):
            with store.writer(wait=0.5):
                pass
    finally:
        process.kill()
        process.wait()


def test_a_memory_made_on_another_model_is_refused_and_left_untouched(world, two_concepts, tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    info = two_concepts.manifest() | {"base_fingerprint": "0" * 16}
    (folder / "manifest.json").write_text(json.dumps(info))
    before = snapshot(folder)
    images, _ = subject(12)
    with pytest.raises(InputError, match="made on another model.*use a new memory name"):
        learn(MemoryStore(folder), world, images, "<p9>", "creature", TINY)
    assert snapshot(folder) == before


def test_a_trigger_already_in_the_memory_is_refused_if_asked_and_nothing_changes(world, two_concepts):
    before = snapshot(two_concepts.folder)
    images, _ = subject(12)
    with pytest.raises(InputError, match="already holds '<p1>'"):
        learn(two_concepts, world, images, "<p1>", "creature", TINY, if_learned="error")
    assert snapshot(two_concepts.folder) == before


def test_a_memory_deleted_after_it_was_opened_is_a_clear_error(world, tmp_path):
    store = MemoryStore.open_or_create(tmp_path, "gone", world)
    shutil.rmtree(store.folder)
    images, captions = subject(10)
    with pytest.raises(InputError, match="no longer at"):
        learn(store, world, images, "<g>", "creature", TINY, captions=captions)


def test_a_corrupt_manifest_is_a_clear_error_and_nothing_changes(world, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"format_version": 1, "versions": [')
    before = snapshot(folder)
    images, _ = subject(12)
    with pytest.raises(ConceptKitError, match="manifest.json is damaged.*nothing was changed"):
        learn(MemoryStore(folder), world, images, "<p0>", "creature", TINY)
    assert snapshot(folder) == before


def test_the_artist_acts_only_on_prompts_that_name_the_memorys_concepts(world, two_concepts):
    with_artist, without = memory_model(world, two_concepts), memory_model(world, two_concepts, artist=False)
    both = "a <p0> creature at the top and a <p1> creature at the bottom, red background"
    plain = "a large red star on the left, blue background"
    untouched = sample(with_artist, plain, steps=8, seed=1).images
    assert torch.equal(untouched, sample(without, plain, steps=8, seed=1).images)
    moved = sample(with_artist, both, steps=8, seed=1).images
    assert not torch.allclose(moved, sample(without, both, steps=8, seed=1).images, atol=1e-3)
    assert torch.isfinite(moved).all()


@pytest.mark.parametrize("trains", ["full", "attention", "lora"])
def test_the_memory_nodes_learn_in_sequence_apply_and_export_under_comfyuis_inference_mode(world, tmp_path,
                                                                                           monkeypatch, trains):
    monkeypatch.setenv("CONCEPTKIT_MODELS_DIR", str(tmp_path))
    nodes = {name: cls() for name, cls in NODE_CLASS_MAPPINGS.items()}
    with torch.inference_mode():
        (memory,) = nodes["ConceptKitConceptMemory"].open(world, "pets", trains)
        for k, index in enumerate((10, 11)):
            images, _ = subject(index)
            (memory,) = nodes["ConceptKitMemoryLearn"].learn(memory, world, images, f"<p{k}>", "creature", steps=3,
                                                             seed=0)
        again = nodes["ConceptKitMemoryLearn"].learn(memory, world, images, "<p1>", "creature", steps=3, seed=0)
        version_again, version_2 = again[0].current().version, memory.current().concept
        with pytest.raises(InputError, match="already holds '<p1>'.*if_learned"):  # new settings, learning refused
            nodes["ConceptKitMemoryLearn"].learn(memory, world, images, "<p1>", "creature", steps=4, seed=0,
                                                 if_learned="error")
        (relearned,) = nodes["ConceptKitMemoryLearn"].learn(memory, world, images, "<p1>", "creature", steps=4,
                                                            seed=0)  # new settings, queued again: learned again
        (applied,) = nodes["ConceptKitApplyMemory"].apply(world, memory, 1.0, True, 20.0, 0.25)
        (images,) = nodes["ConceptKitSample"].generate(applied, "a <p0> creature at the top and a <p1> creature at "
                                                       "the bottom, red background", "", 0, 4, 5.0, "ddim", 0, 0, 1)
        written = nodes["ConceptKitExportMemory"].export(world, memory, "pets", "counter")["ui"]["text"]
    assert version_again == 2  # the same learning queued again: the memory as it was
    state = relearned.current()
    assert state.version == 3 and state.triggers == ["<p0>", "<p1>"] and (relearned.folder / "v0002").is_dir()
    assert [v["learned"] for v in relearned.manifest()["versions"]] == ["<p0>", "<p1>", "<p1>"]
    assert sorted(state.bank.features) == ["<p0>", "<p1>"]
    # <p0>'s offset and vector are kept exactly; <p1>'s are new
    if trains == "lora":
        assert state.concept.lora_rank == version_2.lora_rank
        rank = LearnSettings().rank
        for module, (down, _up) in version_2.lora_modules().items():
            assert torch.equal(state.concept.lora_modules()[module][0][:rank], down[:rank])
            assert not torch.equal(state.concept.lora_modules()[module][0][rank:], down[rank:])
    else:
        own = state.concept.group("memory")
        for key, offset in version_2.group("memory").items():
            assert torch.equal(own[key], offset) == key.startswith("0.")
    assert torch.equal(state.concept.embeddings(0)[0], version_2.embeddings(0)[0])
    assert images.shape == (1, 64, 64, 3) and torch.isfinite(images).all()
    assert [Path(p).name for p in written] == ["pets" + (".safetensors" if trains == "lora" else ""),
                                               "pets_p0.safetensors", "pets_p1.safetensors"]
    assert Path(written[0]).parent.name == ("loras" if trains == "lora" else "diffusers")
    assert Path(written[1]).parent.name == "embeddings"
    if trains != "lora":  # the tuned UNet loads in diffusers, with the memory's weights
        from diffusers import UNet2DConditionModel
        unet = UNet2DConditionModel.from_pretrained(Path(written[0]) / "unet")
        name, offset = next(iter(state.concept.deltas().items()))
        tuned = unet.get_parameter(name.removeprefix("unet."))
        assert torch.allclose(tuned, world.unet.get_parameter(name.removeprefix("unet.")) + offset, atol=1e-6)
    assert not list((tmp_path / "conceptkit" / "checkpoints").glob("*/step_*"))


def test_a_memory_made_again_under_its_name_with_other_weights_learns_its_concepts_again(world, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.setenv("CONCEPTKIT_MODELS_DIR", str(tmp_path))
    nodes = {name: cls() for name, cls in NODE_CLASS_MAPPINGS.items()}
    images, _ = subject(10)
    kinds = []
    for trains in ("full", "lora"):
        (memory,) = nodes["ConceptKitConceptMemory"].open(world, "pets", trains)
        (memory,) = nodes["ConceptKitMemoryLearn"].learn(memory, world, images, "<p0>", "creature", steps=2, seed=0)
        kinds.append(memory.current().concept.kind)
        shutil.rmtree(memory.folder)  # the user deletes the memory and makes it again, queueing the same learning
    assert kinds == ["delta", "lora"]


def test_comfyui_opens_the_memory_again_when_it_changed_on_disk(world, tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTKIT_MODELS_DIR", str(tmp_path))
    node = NODE_CLASS_MAPPINGS["ConceptKitConceptMemory"]
    (memory,) = node().open(world, "shared")
    opened = node.IS_CHANGED(name="shared")
    assert node.IS_CHANGED(name="shared") == opened  # nothing changed: ComfyUI keeps its cached output
    images, captions = subject(10)
    learn(memory, world, images, "<s>", "creature", TINY, captions=captions)  # e.g. by another workflow
    learned = node.IS_CHANGED(name="shared")
    assert learned != opened
    shutil.rmtree(memory.folder)
    assert node.IS_CHANGED(name="shared") not in (opened, learned)


def test_an_applied_memory_samples_with_the_personalization_guidance_sampler(world, two_concepts):
    from conceptkit.core.methods.personalization_guidance import personalization_sample

    memory = memory_model(world, two_concepts)
    prompt = "a <p0> creature at the top and a <p1> creature at the bottom, red background"
    guided = personalization_sample(world, prompt, finetuned=memory, mode="personalization", steps=6, seed=2).images
    cfg = personalization_sample(world, prompt, finetuned=memory, mode="cfg", steps=6, seed=2).images
    assert guided.shape == (1, 64, 64, 3) and torch.isfinite(guided).all()
    assert not torch.allclose(guided, cfg, atol=1e-3)  # the weak model is the memory at strength omega


def test_a_crash_between_training_and_commit_loses_nothing_and_the_rerun_commits_without_training(world, tmp_path,
                                                                                                  monkeypatch):
    store = MemoryStore.open_or_create(tmp_path / "memories", "pets", world)
    images, captions = subject(12)
    run = tmp_path / "run"

    def crash(*args, **kwargs):
        raise OSError("killed between training and commit")

    with monkeypatch.context() as patched:
        patched.setattr(MemoryStore, "commit", crash)
        with pytest.raises(OSError, match="killed"):
            learn(store, world, images, "<p0>", "creature", TINY, captions=captions, checkpoint_dir=run)
    assert store.current().version == 0 and (run / "result.safetensors").is_file()  # the training is kept
    steps = []
    state = learn(store, world, images, "<p0>", "creature", TINY, captions=captions, checkpoint_dir=run,
                  progress=lambda step, total, preview: steps.append(step))
    assert state.version == 1 and state.triggers == ["<p0>"] and steps == []  # committed, not trained again
    fresh = MemoryStore.open_or_create(tmp_path / "other", "pets", world)
    again = learn(fresh, world, images, "<p0>", "creature", TINY, captions=captions)
    assert all(torch.equal(v, again.concept.tensors[k]) for k, v in state.concept.tensors.items())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks racing processes")
def test_two_writers_racing_for_a_dead_writers_lock_are_never_inside_together_600_of_600(tmp_path):
    from conceptkit.core.files import exclusive_lock

    lock, log = tmp_path / "lock", tmp_path / "inside.log"
    for trial in range(600):
        lock.write_text("999999999")  # left by a writer that was killed: nobody holds it
        start_read, start_write = os.pipe()
        children = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:  # a racing writer
                os.close(start_write)
                os.read(start_read, 1)  # both start at once
                code = 1
                try:
                    with exclusive_lock(lock, 0, lambda holder: InputError("busy")):
                        with open(log, "a") as f:
                            f.write(f"{trial} in {os.getpid()}\n")
                        time.sleep(0.002)
                        with open(log, "a") as f:
                            f.write(f"{trial} out {os.getpid()}\n")
                        code = 0
                except InputError:
                    pass
                os._exit(code)
            children.append(pid)
        os.close(start_read)
        os.close(start_write)  # go
        for pid in children:
            os.waitpid(pid, 0)
    lines = log.read_text().splitlines()
    inside, overlaps, entered = set(), 0, {}
    for line in lines:
        trial, what, pid = line.split()
        if what == "in":
            overlaps += bool(inside)
            inside.add(pid)
            entered[trial] = entered.get(trial, 0) + 1
        else:
            inside.discard(pid)
    assert overlaps == 0 and len(entered) == 600  # every trial: someone got in, never two at once
    assert not lock.exists()


DAMAGED_MANIFESTS = {  # name -> (change to a good manifest, words of the message)
    "format version 0": (lambda m: m | {"format_version": 0}, "unknown format version 0"),
    "format version not a number": (lambda m: m | {"format_version": "one"}, "is damaged"),
    "format of a newer ConceptKit": (lambda m: m | {"format_version": 2}, "newer ConceptKit"),
    "a version entry without its number": (lambda m: m | {"versions": [*m["versions"], {"learned": "<x>"}]},
                                           "is damaged"),
    "a version number that is not one": (lambda m: m | {"versions": [{**m["versions"][0], "version": "first"}]},
                                         "is damaged"),
    "current names no version": (lambda m: m | {"current": 9}, "current version 9 is not one of its versions"),
    "family not text": (lambda m: m | {"family": 3}, "is damaged"),
    "versions not a list": (lambda m: m | {"versions": {}}, "is damaged"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_MANIFESTS))
def test_a_damaged_manifest_is_found_before_any_learning_and_nothing_changes(world, two_concepts, tmp_path, case):
    change, words = DAMAGED_MANIFESTS[case]
    folder = tmp_path / "pets"
    shutil.copytree(two_concepts.folder, folder)
    (folder / "manifest.json").write_text(json.dumps(change(two_concepts.manifest())))
    before = snapshot(folder)
    images, captions = subject(12)
    steps = []
    with pytest.raises(ConceptKitError, match=words):
        learn(MemoryStore(folder), world, images, "<p9>", "creature", TINY, captions=captions,
              progress=lambda step, total, preview: steps.append(step))
    assert steps == [] and snapshot(folder) == before


def test_a_manifest_that_is_a_folder_is_a_clear_error(world, tmp_path):
    folder = tmp_path / "pets"
    (folder / "manifest.json").mkdir(parents=True)
    with pytest.raises(ConceptKitError, match="could not read the memory's manifest"):
        MemoryStore(folder).manifest()


def test_a_lock_path_that_is_a_folder_is_a_clear_error_and_stays(world, two_concepts, tmp_path):
    folder = tmp_path / "pets"
    shutil.copytree(two_concepts.folder, folder)
    (folder / "lock").mkdir()
    with pytest.raises(ConceptKitError, match=f"could not open the lock file {folder / 'lock'}"):
        with MemoryStore(folder).writer():
            pass
    assert (folder / "lock").is_dir()


def test_kill_9_between_training_and_commit_then_the_rerun_commits_without_training(world, tmp_path):
    root, run = tmp_path / "memories", tmp_path / "run"
    store = MemoryStore.open_or_create(root, "pets", world)
    process = subprocess.Popen([sys.executable, str(HELPER), "learn-then-hang", str(root), "pets", "12", "<p0>", "4",
                                str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().startswith("trained")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert store.current().version == 0 and (run / "result.safetensors").is_file()  # trained, kept, not committed
    images, captions = subject(12)
    steps = []
    state = learn(store, world, images, "<p0>", "creature", LearnSettings(steps=4, candidates=2, keep=1),
                  captions=captions, checkpoint_dir=run, progress=lambda step, total, preview: steps.append(step))
    assert state.version == 1 and state.triggers == ["<p0>"] and steps == []  # committed, no second training


def test_the_artist_samples_a_memory_read_from_disk_by_a_model_loaded_under_inference_mode(two_concepts,
                                                                                              monkeypatch):
    monkeypatch.setenv("CONCEPTKIT_MODELS_DIR", str(two_concepts.folder.parent.parent))
    nodes = {name: cls() for name, cls in NODE_CLASS_MAPPINGS.items()}
    with torch.inference_mode():  # a later ComfyUI prompt: the model loaded and the memory read under inference mode
        (model,) = nodes["ConceptKitLoadModel"].load(model="embedded", dtype="fp32")
        memory = MemoryStore(two_concepts.folder)
        (applied,) = nodes["ConceptKitApplyMemory"].apply(model, memory, 1.0, True, 20.0, 0.25)
        (images,) = nodes["ConceptKitSample"].generate(applied, "a <p0> creature at the top and a <p1> creature at "
                                                       "the bottom, red background", "", 0, 4, 5.0, "ddim", 0, 0, 1)
    assert images.shape == (1, 64, 64, 3) and torch.isfinite(images).all()
