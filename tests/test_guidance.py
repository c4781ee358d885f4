"""Personalization Guidance Sampler: the three guidance modes on LoRA, full-offset and token concepts and on a
fine-tuned checkpoint, the weak model they interpolate, the node, and the bench's verdicts."""

from __future__ import annotations

import pytest
import torch

from conceptkit import NODE_CLASS_MAPPINGS
from conceptkit.benchmarks.frontier import frontier_plot, pareto_frontier
from conceptkit.benchmarks.guidance import beats_baselines, cost_ratios, interleaved, quality_verdicts
from conceptkit.core.concepts import Trigger, apply_concept
from conceptkit.core.errors import Cancelled, InputError
from conceptkit.core.methods.personalization_guidance import (
    Autoguidance,
    PersonalizationGuidance,
    WeakModel,
    personalization_sample,
)
from conceptkit.core.methods.personalization_guidance.guidance import WeakPasses
from conceptkit.core.model import Conditioning, encode_prompts, load_model, patches_in_effect, unet_denoiser
from conceptkit.core.sampling import CFG, sample

from helpers.concepts import delta_concept, lora_concept

PROMPT = "a <t1> creature on the left, red background"
RUN = dict(seed=3, steps=5, batch_size=2)


@pytest.fixture(scope="module")
def world():
    return load_model(device="cpu")


@pytest.fixture(scope="module")
def concepts(world):
    token_only = lora_concept(world, seed=2)
    token_only.tensors = {k: v for k, v in token_only.tensors.items() if k.startswith("embedding.")}
    token_only.triggers = (Trigger("<t1>", "creature"),)  # the class word: one token of the world's vocabulary
    return {"lora": lora_concept(world), "full": delta_concept(world, trigger="<t1>"), "token": token_only}


@pytest.fixture(scope="module")
def finetuned_checkpoint(world, concepts):
    """A second copy of the world model with the full concept's offsets baked into its weights."""
    tuned = load_model(device="cpu")
    with torch.no_grad():
        for name, delta in concepts["full"].deltas().items():
            tuned.unet.get_parameter(name.removeprefix("unet.")).add_(delta)
    return tuned


@pytest.mark.parametrize("kind", ["lora", "full", "token"])
def test_omega_1_reproduces_cfg(world, concepts, kind):
    tuned = apply_concept(world, concepts[kind])
    cfg = sample(tuned, PROMPT, guidance=CFG(6.0), **RUN).images
    personalization = sample(tuned, PROMPT, guidance=PersonalizationGuidance(6.0, omega_start=1.0), **RUN).images
    assert (personalization - cfg).abs().max() <= 1e-5


def test_omega_1_reproduces_cfg_for_a_finetuned_checkpoint(world, finetuned_checkpoint):
    cfg = sample(finetuned_checkpoint, PROMPT, guidance=CFG(6.0), **RUN).images
    personalization = sample(finetuned_checkpoint, PROMPT, guidance=PersonalizationGuidance(6.0, 1.0, pretrained=world),
                             **RUN).images
    assert (personalization - cfg).abs().max() <= 1e-5


def _unet_outputs(model, omegas, x, t, cond):
    with torch.no_grad(), patches_in_effect(model) as patches:
        passes = WeakPasses(WeakModel.of(patches), None)
        return passes.run(unet_denoiser(model, 64, 64), x.repeat(len(omegas), 1, 1, 1), t,
                          Conditioning.cat([cond] * len(omegas)), omega=omegas)


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_the_weak_model_interpolates_between_base_and_finetuned_in_one_batch(world, concepts, kind):
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    cond = encode_prompts(world, ["a creature on the left"])
    weak = _unet_outputs(apply_concept(world, concepts[kind]), [0.0, 0.5, 1.0], x, t, cond)
    expected = torch.cat([_unet_outputs(world, [1.0], x, t, cond),  # omega 0: the base model
                          _unet_outputs(apply_concept(world, concepts[kind], 0.5), [1.0], x, t, cond),
                          _unet_outputs(apply_concept(world, concepts[kind]), [1.0], x, t, cond)])
    assert (weak - expected).abs().max() <= 1e-5
    assert (expected[0] - expected[2]).abs().max() > 1e-3  # the concept does change the output


def test_a_finetuned_checkpoint_is_weakened_like_the_same_concept(world, concepts, finetuned_checkpoint):
    guidance = PersonalizationGuidance(6.0, omega_start=0.2, omega_end=0.8)
    by_concept = sample(apply_concept(world, concepts["full"]), PROMPT, guidance=guidance, **RUN).images
    by_checkpoint = sample(finetuned_checkpoint, PROMPT, guidance=PersonalizationGuidance(6.0, 0.2, 0.8, world),
                           **RUN).images
    assert (by_checkpoint - by_concept).abs().max() <= 1e-4
    assert (by_concept - sample(apply_concept(world, concepts["full"]), PROMPT, guidance=CFG(6.0), **RUN).images
            ).abs().max() > 1e-2


def test_at_omega_0_the_trigger_reads_as_its_class_word(world, concepts):
    tuned = apply_concept(world, concepts["token"])
    with patches_in_effect(tuned) as patches:
        learned = encode_prompts(tuned, ["a <t1> on the left"]).hidden
        with WeakModel.of(patches).at(0.0):
            unlearned = encode_prompts(tuned, ["a <t1> on the left"]).hidden
    as_class_word = encode_prompts(world, ["a creature on the left"]).hidden
    assert (unlearned - as_class_word).abs().max() <= 1e-5
    assert (learned - as_class_word).abs().max() > 1e-2


def test_autoguidance_weakens_the_token_and_personalization_needs_the_trigger_in_the_weak_branch(world, concepts):
    tuned = apply_concept(world, concepts["token"])
    cfg = sample(tuned, PROMPT, guidance=CFG(3.0), **RUN).images
    auto = sample(tuned, PROMPT, guidance=Autoguidance(3.0, 0.0), **RUN).images
    personalization = sample(tuned, PROMPT, guidance=PersonalizationGuidance(3.0, 0.0), **RUN).images
    assert (auto - cfg).abs().max() > 1e-2
    # a token concept leaves the unconditional branch as it was: its personalization guidance is CFG
    assert (personalization - cfg).abs().max() <= 1e-5


def test_guiding_leaves_the_base_model_and_the_concept_as_they_were(world, concepts):
    before = {k: v.clone() for k, v in world.unet.state_dict().items()}
    tuned = apply_concept(apply_concept(world, concepts["lora"]), delta_concept(world, trigger="<t2>"), 0.7)
    first = sample(tuned, PROMPT, guidance=PersonalizationGuidance(6.0, 0.3, 0.9), **RUN).images
    assert all(torch.equal(v, world.unet.state_dict()[k]) for k, v in before.items())
    assert torch.equal(first, sample(tuned, PROMPT, guidance=PersonalizationGuidance(6.0, 0.3, 0.9), **RUN).images)


def test_bad_requests_say_what_to_connect(world, concepts, finetuned_checkpoint, models_dir):
    with pytest.raises(InputError, match="needs a fine-tuned model"):
        personalization_sample(world, "a creature", mode="personalization", steps=2)
    with pytest.raises(InputError, match="not both"):
        personalization_sample(world, PROMPT, concept=concepts["lora"], finetuned=finetuned_checkpoint, steps=2)
    with pytest.raises(InputError, match="not one of"):
        personalization_sample(world, PROMPT, concept=concepts["lora"], mode="fancy", steps=2)
    with pytest.raises(InputError, match="omega_start must be a number"):
        personalization_sample(world, PROMPT, concept=concepts["lora"], omega_start=float("nan"), steps=2)
    sd1 = load_model(models_dir / "diffusers" / "tiny_sd1", device="cpu")
    with pytest.raises(InputError, match="connect the base model"):
        personalization_sample(world, "a cat", finetuned=sd1, steps=2, width=32, height=32)


@pytest.fixture
def node():
    return NODE_CLASS_MAPPINGS["ConceptKitPersonalizationGuidanceSampler"]()


def test_node_cfg_mode_is_conceptkit_sample_on_the_applied_concept(node, world, concepts):
    args = dict(prompt=PROMPT, negative_prompt="", w=5.0, omega_start=0.5, omega_end=0.5, sampler="ddim", steps=4,
                seed=7, width=0, height=0, batch_size=2)
    (cfg,) = node.generate(world, mode="cfg", concept=concepts["lora"], **args)
    tuned = NODE_CLASS_MAPPINGS["ConceptKitApplyConcept"]().apply(world, concepts["lora"], 1.0)[0]
    (plain,) = NODE_CLASS_MAPPINGS["ConceptKitSample"]().generate(tuned, PROMPT, "", 7, 4, 5.0, "ddim", 0, 0, 2)
    assert cfg.shape == (2, 64, 64, 3) and torch.equal(cfg, plain)
    (by_model,) = node.generate(world, mode="personalization", finetuned_model=tuned, **args)
    (by_concept,) = node.generate(world, mode="personalization", concept=concepts["lora"], **args)
    assert torch.equal(by_model, by_concept) and not torch.equal(by_concept, cfg)


def test_node_declares_tooltips_and_cancel_stops_within_a_step(node, world, concepts, monkeypatch):
    spec = NODE_CLASS_MAPPINGS["ConceptKitPersonalizationGuidanceSampler"].INPUT_TYPES()
    for section in spec.values():
        assert all(options[1].get("tooltip") for options in section.values())
    from conceptkit.nodes import comfy_adapter

    checks = []

    def cancel_after_one_step():
        checks.append(1)
        return len(checks) > 1

    monkeypatch.setattr(comfy_adapter, "cancel_requested", cancel_after_one_step)
    with pytest.raises(Cancelled, match="step 1 of 6"):
        node.generate(world, PROMPT, "", "personalization", 5.0, 0.5, 0.5, "ddim", 6, 0, 0, 0, 1,
                      concept=concepts["full"])


def test_bench_verdicts_follow_the_frontier():
    def point(mode, subject_fidelity, text_fidelity):
        return {"mode": mode, "subject_fidelity": subject_fidelity, "text_fidelity": text_fidelity}

    baselines = [point("cfg", 0.40, 0.70), point("cfg", 0.50, 0.60), point("autoguidance", 0.55, 0.50)]
    assert beats_baselines(point("personalization", 0.45, 0.65), baselines)  # above the 0.40 of tf >= 0.65
    assert not beats_baselines(point("personalization", 0.50, 0.55), baselines)  # cfg 0.50 at 0.60 is as good
    assert not beats_baselines(point("personalization", 0.30, 0.90), baselines)  # better text, worse likeness
    assert beats_baselines(point("personalization", 0.41, 0.90), baselines)
    results = [{**p, "concept_kind": "lora", "subject": s} for s in (0, 1) for p in baselines]
    results += [{**point("personalization", 0.45, 0.65), "concept_kind": "lora", "subject": 0},
                {**point("personalization", 0.35, 0.65), "concept_kind": "lora", "subject": 1}]
    assert quality_verdicts(results) == {"lora": [0]}
    assert pareto_frontier([(0.5, 0.5), (0.6, 0.4), (0.4, 0.4), (0.6, 0.3)]) == [(0.5, 0.5), (0.6, 0.4)]
    rows = [{"concept_kind": "lora", "mode": m, "seconds_per_image": s, "peak_mb": 100.0, "w": 1.0, "omega": "-",
             "subject_fidelity": 0.5, "text_fidelity": 0.5} for m, s in
            (("cfg", 1.0), ("personalization", 1.02), ("autoguidance", 1.0))]
    assert cost_ratios(rows)["lora"] == pytest.approx({"seconds": 1.02, "peak_mb": 1.0})
    assert frontier_plot(rows).size[0] > 300
    modes = [mode for mode, *_ in interleaved({"cfg": [(1, None)] * 2, "personalization": [(1, 0.5)] * 6})]
    assert modes == ["personalization", "cfg", "personalization", "personalization", "personalization", "cfg",
                     "personalization", "personalization"]
