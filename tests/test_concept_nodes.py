"""The personalization nodes as ComfyUI calls them: Lipschitz Finetune -> Apply / Save / Load / Export."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conceptkit import NODE_CLASS_MAPPINGS
from conceptkit.core.errors import ConceptKitError, InputError

N = NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def world():
    return N["ConceptKitLoadModel"]().load("embedded", "cpu", "fp32", "auto")[0]


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTKIT_MODELS_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def trained(world, models):
    images, captions = N["ConceptKitWorldSubject"]().render(subject=3, count=3, seed=0)
    concept, curve = N["ConceptKitLipschitzFinetune"]().train(
        world, images, "<pet>", "creature", captions, "lora", 2, 0.01, "frobenius", steps=3, learning_rate=5e-3,
        batch_size=2, seed=0)
    return concept, curve


def test_finetune_node_gives_a_concept_a_loss_curve_and_keeps_only_its_result(trained, models):
    concept, curve = trained
    assert concept.method == "lipschitz" and concept.trigger == "<pet>" and concept.kind == "lora"
    assert curve.shape[0] == 1 and curve.shape[-1] == 3 and curve.min() >= 0 and curve.max() <= 1
    checkpoints = models / "conceptkit" / "checkpoints"
    assert [p.name for p in checkpoints.glob("*/*")] == ["result.safetensors"]  # no step_* checkpoint left


def test_a_save_that_fails_after_training_loses_nothing(trained, world, models, monkeypatch):
    from conceptkit.nodes import finetune_nodes

    concept, curve = trained
    with pytest.raises(ConceptKitError, match="folder separator"):
        N["ConceptKitSaveConcept"]().save(concept, "a/b", "counter")
    monkeypatch.setattr(finetune_nodes, "finetune", lambda *a, **k: pytest.fail("trained again"))
    images, captions = N["ConceptKitWorldSubject"]().render(subject=3, count=3, seed=0)
    again, again_curve = N["ConceptKitLipschitzFinetune"]().train(
        world, images, "<pet>", "creature", captions, "lora", 2, 0.01, "frobenius", steps=3, learning_rate=5e-3,
        batch_size=2, seed=0)
    assert set(again.tensors) == set(concept.tensors)
    assert all(torch.equal(again.tensors[k], concept.tensors[k]) for k in concept.tensors)
    assert torch.equal(again_curve, curve)


def test_save_load_and_apply_through_the_nodes(trained, world, models):
    concept, _ = trained
    shown = N["ConceptKitSaveConcept"]().save(concept, "pet", "error")
    written = models / "conceptkit" / "concepts" / "pet.safetensors"
    assert written.is_file() and shown == {"ui": {"text": [str(written)]}}
    with pytest.raises(ConceptKitError, match="already exists"):
        N["ConceptKitSaveConcept"]().save(concept, "pet", "error")
    with pytest.raises(ConceptKitError, match="folder separator"):
        N["ConceptKitSaveConcept"]().save(concept, "../pet", "counter")
    assert "pet.safetensors" in N["ConceptKitLoadConcept"].INPUT_TYPES()["required"]["concept_name"][0]
    (loaded,) = N["ConceptKitLoadConcept"]().load("pet.safetensors")
    (tuned,) = N["ConceptKitApplyConcept"]().apply(world, loaded, 1.0)
    images = N["ConceptKitSample"]().generate(tuned, "a <pet> creature on the left, blue background", "", 0, 4, 5.0,
                                              "ddim", 0, 0, 1)[0]
    assert images.shape == (1, 64, 64, 3) and torch.isfinite(images).all()


def test_export_writes_where_comfyui_looks(trained, world, models):
    concept, _ = trained
    for fmt in ("kohya_lora", "embedding", "diffusers"):
        N["ConceptKitExportConcept"]().export(world, concept, fmt, "pet", "error")
    lora = load_file(str(models / "loras" / "pet.safetensors"))
    assert any(k.startswith("lora_unet_down_blocks_0_attentions_0_") for k in lora)
    assert set(load_file(str(models / "embeddings" / "pet.safetensors"))) == {"emb_params"}
    assert (models / "conceptkit" / "exports" / "pet" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.parametrize("fmt,first,second", [
    ("kohya_lora", "loras/pet.safetensors", "loras/pet_00002.safetensors"),
    ("embedding", "embeddings/pet.safetensors", "embeddings/pet_00002.safetensors"),
    ("diffusers", "conceptkit/exports/pet", "conceptkit/exports/pet_00002"),
    ("save", "conceptkit/concepts/pet.safetensors", "conceptkit/concepts/pet_00002.safetensors"),
])
def test_a_taken_name_gets_a_counter_as_in_comfyuis_save_nodes_and_the_first_file_stays(
        trained, world, models, fmt, first, second):
    concept, _ = trained

    def write():
        if fmt == "save":
            return N["ConceptKitSaveConcept"]().save(concept, "pet", "counter")
        return N["ConceptKitExportConcept"]().export(world, concept, fmt, "pet", "counter")

    assert write()["ui"]["text"] == [str(models / first)]
    before = {p: p.read_bytes() for p in [models / first, *(models / first).rglob("*")] if p.is_file()}
    assert write()["ui"]["text"] == [str(models / second)]
    assert {p: p.read_bytes() for p in before} == before
    assert not [p for p in (models / first).parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_a_name_that_cannot_be_written_is_refused_before_anything_runs():
    for node in ("ConceptKitSaveConcept", "ConceptKitExportConcept"):
        assert N[node].VALIDATE_INPUTS(name="my_dog") is True
        assert "folder separator" in N[node].VALIDATE_INPUTS(name="../my_dog")


def test_load_concept_with_nothing_saved_says_what_to_do(models):
    choices = N["ConceptKitLoadConcept"].INPUT_TYPES()["required"]["concept_name"][0]
    with pytest.raises(InputError, match="Save Concept"):
        N["ConceptKitLoadConcept"]().load(choices[0])


def test_finetune_node_trains_under_comfyuis_inference_mode(models):
    with torch.inference_mode():  # ComfyUI executes every node inside inference mode, loaders included
        model = N["ConceptKitLoadModel"]().load("embedded", "cpu", "fp32", "auto")[0]
        images, captions = N["ConceptKitWorldSubject"]().render(subject=5, count=2, seed=0)
        concept, _ = N["ConceptKitLipschitzFinetune"]().train(
            model, images, "<pet2>", "creature", captions, "lora", 2, 1e-4, "frobenius", steps=2,
            learning_rate=5e-3, batch_size=1, seed=0, train_text_encoder=True)
        (tuned,) = N["ConceptKitApplyConcept"]().apply(model, concept, 1.0)
        images = N["ConceptKitSample"]().generate(tuned, "a <pet2> creature", "", 0, 2, 5.0, "ddim", 0, 0, 1)[0]
    assert concept.kind == "lora" and torch.isfinite(images).all()


def test_subjects_trained_together_through_the_nodes_give_one_concept_with_both_triggers(world, models, monkeypatch):
    from conceptkit.nodes import finetune_nodes

    images, captions = N["ConceptKitWorldSubject"]().render(subject=0, count=3, seed=0)
    other, other_captions = N["ConceptKitWorldSubject"]().render(subject=1, count=2, seed=0)
    larger = torch.nn.functional.interpolate(other.permute(0, 3, 1, 2), size=(96, 96)).permute(0, 2, 3, 1)
    (together,) = N["ConceptKitSubject"]().add(larger, "<pal>", "creature", other_captions)

    def train(subjects):
        return N["ConceptKitLipschitzFinetune"]().train(
            world, images, "<pet>", "creature", captions, "lora", 2, 0.01, "frobenius", steps=3, learning_rate=5e-3,
            batch_size=2, seed=0, together=subjects)[0]

    concept = train(together)
    assert [t.word for t in concept.triggers] == ["<pet>", "<pal>"] and concept.parameters["images"] == 5
    (tuned,) = N["ConceptKitApplyConcept"]().apply(world, concept, 1.0)
    pair = N["ConceptKitSample"]().generate(tuned, "a <pet> creature on the left and a <pal> creature on the right, "
                                            "blue background", "", 0, 4, 5.0, "ddim", 0, 0, 1)[0]
    assert pair.shape == (1, 64, 64, 3) and torch.isfinite(pair).all()
    results = sorted((models / "conceptkit" / "checkpoints").glob("*/result.safetensors"))
    assert len(results) == 1
    real = finetune_nodes.finetune
    monkeypatch.setattr(finetune_nodes, "finetune", lambda *a, **k: pytest.fail("trained again"))
    assert all(torch.equal(train(together).tensors[k], t) for k, t in concept.tensors.items())  # queued again
    monkeypatch.setattr(finetune_nodes, "finetune", real)
    (fewer,) = N["ConceptKitSubject"]().add(larger[:1], "<pal>", "creature", other_captions.splitlines()[0])
    train(fewer)  # another companion is another run, not the kept result
    assert len(list((models / "conceptkit" / "checkpoints").glob("*/result.safetensors"))) == 2


def test_a_subject_to_train_together_is_refused_with_what_to_fix(world, models):
    images, captions = N["ConceptKitWorldSubject"]().render(subject=1, count=2, seed=0)
    subject = N["ConceptKitSubject"]()
    with pytest.raises(InputError, match="1 captions were given for 2 images"):
        subject.add(images, "<pal>", "creature", "a {trigger} on the left")
    with pytest.raises(InputError, match="class word is empty"):
        subject.add(images, "<pal>", " ", "")
    (first,) = subject.add(images, "<pal>", "creature", captions)
    with pytest.raises(InputError, match="an earlier subject has this trigger"):
        subject.add(images, "<pal>", "creature", "", subjects=first)
    for trigger, (together,), problem in (("<pal>", (first,), "share a trigger"),
                                          ("<pet>", subject.add(images, "<my pal>", "creature", ""), "contains ' '")):
        with pytest.raises(InputError, match=problem):  # before any training
            N["ConceptKitLipschitzFinetune"]().train(world, images, trigger, "creature", captions, "lora", 2, 0.0,
                                                     "frobenius", steps=2, learning_rate=5e-3, batch_size=1, seed=0,
                                                     together=together)
