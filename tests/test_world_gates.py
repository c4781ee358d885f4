"""The world check's fast gates on the shipped weights, at small size: what the third edition must let a method
express (a name that carries a creature, identity that survives the VAE, a domain decided inside the SGE window,
images without a frame)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptkit.benchmarks.world_check import domain_gates, identity_gates, text_path_gate
from conceptkit.core.model import load_model
from conceptkit.core.sampling import CFG, sample
from conceptkit.core.world.metrics import as_uint8, identity_features, subject_fidelity
from conceptkit.core.world.scenes import Scene, WorldObject, background_colours
from conceptkit.core.world.vocabulary import CREATURE_NAMES, FAIR_DOMAINS, NAMED_CREATURE_SEEDS


@pytest.fixture(scope="module")
def world():
    return load_model(device="cpu")


def _draw(model, prompt: str, count: int = 4) -> np.ndarray:
    return as_uint8(sample(model, [prompt] * count, seed=0, steps=25, guidance=CFG(5.0)).images)


def _renders(seed: int, count: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([Scene(str(rng.choice(background_colours(seed))), "plain",
                           (WorldObject("centre", instance=seed),)).render(rng) for _ in range(count)])


def test_the_identity_network_tells_held_out_creatures_apart_on_renders_and_vae_round_trips(world):
    for gate in identity_gates(world, 20):
        assert gate.value >= 0.95, gate


def test_a_name_draws_its_own_creature_and_moving_its_vector_to_another_name_changes_it(world):
    tokenizer, table = world.tokenizers[0], world.text_encoders[0].get_input_embeddings().weight
    for index in (0, 1):
        name, seed = CREATURE_NAMES[index], NAMED_CREATURE_SEEDS[index]
        prompt = f"{name} in the centre, {background_colours(seed)[0]} background"
        drawn = _draw(world, prompt)
        other_creature = _renders(NAMED_CREATURE_SEEDS[50])
        assert subject_fidelity(drawn, _renders(seed)) > subject_fidelity(drawn, other_creature) + 0.3
        row = tokenizer.convert_tokens_to_ids(name + "</w>")
        other = table[tokenizer.convert_tokens_to_ids(CREATURE_NAMES[50] + "</w>")].detach().clone()
        kept = table[row].detach().clone()
        with torch.no_grad():
            table[row] = (kept + other) / 2
        try:
            moved = _draw(world, prompt)
        finally:
            with torch.no_grad():
                table[row] = kept
        assert float((identity_features(drawn) * identity_features(moved)).sum(1).mean()) < 0.8


def test_a_small_random_move_of_a_names_vector_changes_the_drawn_creature(world):
    """The text path (#27): 0.3 of a typical word's norm in a random direction draws another creature."""
    gate = text_path_gate(world, 3, 1, 2)
    assert gate.holds, gate  # identity cosine < 0.8


def test_each_fair_unseen_domain_commits_inside_the_sge_window(world):
    for gate in domain_gates(world, 8, FAIR_DOMAINS):
        assert gate.holds, gate


@pytest.mark.parametrize("rgb", [(40, 80, 220), (240, 210, 40)])
def test_the_vae_gives_back_a_plain_background_without_a_frame(world, rgb):
    """A plain background's outer row comes back within a few levels of its colour (it was 30-40 off)."""
    pixels = torch.tensor(rgb).float().view(1, 3, 1, 1).expand(1, 3, 64, 64) / 127.5 - 1
    with torch.no_grad():
        decoded = world.vae.decode(world.vae.encode(pixels).latent_dist.mean).sample
    image = as_uint8(((decoded + 1) / 2).permute(0, 2, 3, 1))[0].astype(int)
    outer = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    assert np.abs(outer.mean(0) - rgb).max() <= 10
    assert np.abs(image[8:56, 8:56].reshape(-1, 3).mean(0) - rgb).max() <= 3


def test_generated_images_have_no_frame(world):
    drawn = _draw(world, "a large red star in the centre, blue background", 2).astype(int)
    edge = np.concatenate([drawn[:, 0], drawn[:, -1], drawn[:, :, 0], drawn[:, :, -1]], axis=1).reshape(-1, 3)
    assert np.abs(edge.mean(0) - (40, 80, 220)).max() <= 10


def test_the_world_check_verdict_needs_every_required_gate_and_prints_candidates_as_not_required():
    from conceptkit.benchmarks.world_check import Gate, all_required_hold, table

    fair = Gate("top_left: kept from the window's low end", 0.95, 0.03, ">= 0.90", True)
    candidate = Gate("snowline: kept from the window's low end", 0.08, 0.04, ">= 0.90", False, required=False)
    assert all_required_hold([fair, candidate])
    assert not all_required_hold([fair, candidate, Gate("text path", 0.9, 0.1, "< 0.8", False)])
    assert "| snowline: kept from the window's low end | 0.080 | 0.040 | >= 0.90 | no (not required) |" \
        in table([fair, candidate])
