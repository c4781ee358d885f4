"""The world: deterministic scenes, exact checkers, a validated identity network, a resumable trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conceptkit.benchmarks.world_check import roc_auc
from conceptkit.core.metrics import diversity, frechet_distance
from conceptkit.core.world import CAPTION_WORDS, COLOURS, evaluation_scenes, random_scene, training_batch
from conceptkit.core.world.checkers import attribute_accuracy, check_image
from conceptkit.core.world.metric_nets import IDENTITY_VALIDATION_SEEDS
from conceptkit.core.world.metrics import (
    forgetting,
    identity_features,
    mean_text_fidelity,
    pair_accuracy,
    subject_fidelity,
)
from conceptkit.core.world.scenes import Scene, WorldObject
from conceptkit.core.world.vocabulary import HELDOUT_INSTANCE_SEEDS, HELDOUT_PAIRS, PATTERN_SHADE

from clip_tokenizer import write_clip_tokenizer
from train_metric_nets import creature_view


def renders(scenes, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([s.render(rng) for s in scenes])


def test_training_batches_are_a_pure_function_of_seed_and_step():
    a_images, a_captions = training_batch(3, 17, 8)
    b_images, b_captions = training_batch(3, 17, 8)
    c_images, _ = training_batch(3, 18, 8)
    assert a_captions == b_captions and np.array_equal(a_images, b_images)
    assert not np.array_equal(a_images, c_images)
    assert a_images.shape == (8, 64, 64, 3) and a_images.dtype == np.uint8


def test_heldout_pairs_never_appear_in_training():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        for obj in random_scene(rng, "train").objects:
            assert (obj.colour, obj.shape) not in HELDOUT_PAIRS
    assert all((o.colour, o.shape) in HELDOUT_PAIRS for s in evaluation_scenes("heldout", 50) for o in s.objects)


def test_every_caption_word_is_one_token(tmp_path):
    tokenizer = write_clip_tokenizer(CAPTION_WORDS, tmp_path / "tok", max_length=32)
    _, captions = training_batch(0, 0, 64)
    for caption in captions:
        words = caption.replace(",", " ,").split()
        ids = tokenizer(caption).input_ids[1:-1]
        assert len(ids) == len(words), caption


def test_ground_truth_renders_score_full_text_fidelity():
    for split in ("seen", "heldout"):
        scenes = evaluation_scenes(split, 150)
        images = renders(scenes)
        assert mean_text_fidelity(images, scenes) >= 0.97, split
        accuracy = attribute_accuracy(images, scenes)
        assert min(accuracy.values()) >= 0.95, (split, accuracy)


def test_recoloured_background_scores_lower():
    scenes = [s for s in evaluation_scenes("seen", 60) if s.background != "green"]
    images = renders(scenes)
    recoloured = images.copy()
    for image, scene in zip(recoloured, scenes, strict=True):
        for shade in (1.0, PATTERN_SHADE):  # the colour and its pattern marks
            old = (np.array(COLOURS[scene.background]) * shade).round()
            image[np.abs(image.astype(int) - old).sum(-1) < 10] = (np.array(COLOURS["green"]) * shade).round()
    original, changed = mean_text_fidelity(images, scenes), mean_text_fidelity(recoloured, scenes)
    assert changed < original - 0.1
    assert all(not check_image(i, s)["background"][0] for i, s in zip(recoloured, scenes, strict=True))


def test_missing_object_fails_its_attributes():
    scene = Scene("blue", "plain", (WorldObject("left", "star", "red", "large"),))
    empty = Scene("blue", "plain", ()).render()
    result = check_image(empty, scene)
    assert result["background"] == [True] and result["colour"] == [False] and result["position"] == [False]


def test_pair_checks_are_exact_on_renders_and_fail_a_missing_subject_or_a_flooded_background():
    scenes = evaluation_scenes("pairs", 200)
    images = renders(scenes)
    # creatures of the background's own colours are the checker's one blind spot: about 2% of renders
    assert all(value >= 0.97 for value, _ in pair_accuracy(images, scenes).values())
    assert pair_accuracy(images, scenes)["both_creatures"][1] + pair_accuracy(images, scenes)["creature"][1] == 200
    first_only = renders([Scene(s.background, s.pattern, s.objects[:1]) for s in scenes])
    assert pair_accuracy(first_only, scenes)["both_creatures"][0] == 0.0
    with_shape = [s for s in scenes if any(o.instance is None for o in s.objects)]
    flooded = [Scene(next(o.colour for o in s.objects if o.instance is None), s.pattern, s.objects) for s in with_shape]
    assert pair_accuracy(renders(flooded), with_shape)["background"][0] == 0.0


def test_same_creature_scores_higher_subject_fidelity_than_another():
    rng = np.random.default_rng(5)
    for a, b in [(HELDOUT_INSTANCE_SEEDS[0], HELDOUT_INSTANCE_SEEDS[1]), (HELDOUT_INSTANCE_SEEDS[2], 77)]:
        views_a = np.stack([creature_view(rng, a) for _ in range(4)])
        views_a2 = np.stack([creature_view(rng, a) for _ in range(4)])
        views_b = np.stack([creature_view(rng, b) for _ in range(4)])
        as_images = lambda v: torch.from_numpy(v).permute(0, 2, 3, 1)  # noqa: E731
        same = subject_fidelity(as_images(views_a), as_images(views_a2))
        other = subject_fidelity(as_images(views_a), as_images(views_b))
        assert same > other + 0.2


def test_identity_network_separates_instances_with_auc_above_095():
    rng = np.random.default_rng(123)
    seeds = list(IDENTITY_VALIDATION_SEEDS[:100])
    views = np.stack([creature_view(rng, s) for s in seeds for _ in range(2)])
    z = identity_features(torch.from_numpy(views).permute(0, 2, 3, 1)).view(len(seeds), 2, -1)
    positives = (z[:, 0] * z[:, 1]).sum(-1).numpy()
    cross = (z[:, 0] @ z[:, 1].T).numpy()
    negatives = cross[~np.eye(len(seeds), dtype=bool)]
    assert roc_auc(positives, negatives) >= 0.95


def test_feature_distances_answer_known_inputs():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 3.0) == pytest.approx(8 * 9.0, rel=0.05)
    targets = rng.normal(size=(3, 8))
    assert diversity(np.repeat(targets[:1], 5, axis=0), targets) == pytest.approx(0.0, abs=1e-6)
    assert diversity(rng.normal(size=(50, 8)), targets) > 0.5
    assert forgetting([[0.9], [0.8, 0.95], [0.7, 0.9, 0.92]]) == pytest.approx([0.2, 0.05, 0.0])


TINY_WORLD = {
    "seed": 0,
    "vae": {"model": {"block_out_channels": [32, 32], "layers_per_block": 1, "latent_channels": 4,
                      "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
                      "sample_size": 64, "mid_block_add_attention": False},
            "steps": 4, "batch_size": 4, "lr": 1e-3, "warmup": 2, "kl_weight": 1e-6, "crop": 32},
    "text_encoder": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "intermediate_size": 64, "max_position_embeddings": 32, "hidden_act": "quick_gelu"},
    "unet": {"sample_size": 32, "block_out_channels": [32, 32], "layers_per_block": 1,
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "attention_head_dim": 4,
             "cross_attention_dim": 32},
    "noise_schedule": {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                       "beta_end": 0.012, "prediction_type": "epsilon"},
    "dataset": {"size": 16, "encode_batch": 8},
    "diffusion": {"steps": 6, "batch_size": 4, "lr": 1e-3, "warmup": 2, "ema_decay": 0.9, "offset_noise": 0.1,
                  "min_snr_gamma": 5.0, "caption_dropout": 0.1, "grad_clip": 1.0},
    "checkpoint_every": 100,
    "keep_checkpoints": 2,
}


def test_world_trainer_resumes_exactly_across_stages(tmp_path):
    from train_model import main

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_WORLD))
    common = ["--config", str(config), "--threads", "2"]
    assert main(["--workdir", str(tmp_path / "straight"), *common]) == 0
    interrupted = str(tmp_path / "interrupted")
    assert main(["--workdir", interrupted, *common, "--stop-after", "3"]) == 0  # inside the VAE stage
    assert not (tmp_path / "interrupted" / "vae_final").exists()
    assert main(["--workdir", interrupted, *common, "--stop-after", "4"]) == 0  # VAE done, diffusion to step 3
    assert (tmp_path / "interrupted" / "diffusion" / "step_3").exists()
    assert main(["--workdir", interrupted, *common]) == 0
    a = load_file(str(tmp_path / "straight" / "diffusion" / "step_6" / "state.safetensors"))
    b = load_file(str(tmp_path / "interrupted" / "diffusion" / "step_6" / "state.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    export = tmp_path / "export"
    assert main(["--workdir", str(tmp_path / "straight"), *common, "--export", str(export)]) == 0
    assert json.loads((export / "conceptkit.json").read_text())["family"] == "world"


def test_the_creature_seed_ranges_are_disjoint():
    from conceptkit.core.world.metric_nets import IDENTITY_TRAIN_SEEDS, IDENTITY_VALIDATION_SEEDS
    from conceptkit.core.world.vocabulary import ENCODER_DOMAIN_SEEDS, HELDOUT_INSTANCE_SEEDS, TRAIN_INSTANCE_SEEDS

    ranges = {"training": TRAIN_INSTANCE_SEEDS, "held-out subjects": HELDOUT_INSTANCE_SEEDS,
              "identity network": IDENTITY_TRAIN_SEEDS, "identity validation": IDENTITY_VALIDATION_SEEDS,
              "encoder domain": ENCODER_DOMAIN_SEEDS}
    names = list(ranges)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            overlap = range(max(ranges[a].start, ranges[b].start), min(ranges[a].stop, ranges[b].stop))
            assert len(overlap) == 0, f"{a} and {b} share creatures"


def test_the_second_edition_mix_has_two_creatures_and_creatures_with_shapes():
    from conceptkit.core.world.scenes import FIRST_EDITION, SECOND_EDITION

    rng = np.random.default_rng(1)
    scenes = [random_scene(rng, "train", SECOND_EDITION) for _ in range(2000)]
    creatures = [sum(o.instance is not None for o in s.objects) for s in scenes]
    with_shape = [s for s, c in zip(scenes, creatures, strict=True) if c == 1 and len(s.objects) == 2]
    assert 0.12 < np.mean([c == 2 for c in creatures]) < 0.18 and 0.12 < len(with_shape) / len(scenes) < 0.18
    assert all("zigzag" != s.pattern for s in scenes)
    assert "a creature on the left and a creature on the right" in " ".join(s.caption() for s in scenes)
    rng = np.random.default_rng(1)
    first = [random_scene(rng, "train", FIRST_EDITION) for _ in range(500)]
    assert not any(len(s.objects) == 2 and any(o.instance is not None for o in s.objects) for s in first)


def test_read_pattern_is_exact_on_fresh_renders_of_every_pattern():
    from conceptkit.core.world.checkers import ALL_PATTERNS, read_pattern
    from conceptkit.core.world.render import pattern_mask
    from conceptkit.core.world.scenes import SECOND_EDITION

    rng = np.random.default_rng(7)
    for pattern in ALL_PATTERNS:
        right = 0
        for i in range(100):
            base = random_scene(rng, "train", SECOND_EDITION)
            phase = tuple(int(v) for v in np.random.default_rng([i, 5]).integers(0, 8, size=2))
            image = Scene(base.background, pattern, base.objects).render(np.random.default_rng([i, 5]))
            got, got_phase = read_pattern(image)
            right += got == pattern and np.array_equal(pattern_mask(got, got_phase), pattern_mask(pattern, phase))
        assert right >= 99, (pattern, right)


def test_zigzag_scenes_are_far_from_training_scenes_in_the_scene_features():
    from conceptkit.core.world.metrics import domain_fidelity, domain_hit_rate
    from conceptkit.core.world.scenes import SECOND_EDITION

    def renders(seed, pattern=None, n=200):
        rng = np.random.default_rng(seed)
        scenes = [random_scene(rng, "train", SECOND_EDITION) for _ in range(n)]
        scenes = [Scene(s.background, pattern or s.pattern, s.objects) for s in scenes]
        return np.stack([s.render(rng) for s in scenes])

    first, second, zigzag = renders(1), renders(2), renders(3, "zigzag")
    assert domain_hit_rate(zigzag) == 1.0 and domain_hit_rate(first) == 0.0
    between_training = domain_fidelity(first, second)
    assert domain_fidelity(zigzag, first) >= 5 * between_training


def test_masked_halves_identify_each_creature_of_a_pair():
    from conceptkit.core.world.metric_nets import IDENTITY_VALIDATION_SEEDS
    from conceptkit.core.world.metrics import identity_features, masked_half

    rng = np.random.default_rng(11)
    seeds = list(IDENTITY_VALIDATION_SEEDS[:40])
    references = {s: identity_features(np.stack([Scene(str(rng.choice(list(COLOURS))), "plain",
                                                       (WorldObject("centre", instance=s),)).render(rng)
                                                 for _ in range(4)])) for s in seeds}
    same, different = [], []
    for i in range(60):
        a, b = rng.choice(seeds, size=2, replace=False)
        places = ("left", "right") if i % 2 else ("top", "bottom")
        scene = Scene(str(rng.choice(list(COLOURS))), str(rng.choice(["plain", "striped", "checked", "dotted"])),
                      (WorldObject(places[0], instance=int(a)), WorldObject(places[1], instance=int(b))))
        image = scene.render(rng)
        for place, own, other in ((places[0], a, b), (places[1], b, a)):
            half = identity_features(masked_half(image, place)[None])
            same.append(float((half @ references[int(own)].T).mean()))
            different.append(float((half @ references[int(other)].T).mean()))
    assert _roc_auc(same, different) >= 0.95


def _roc_auc(positives: list[float], negatives: list[float]) -> float:
    pos, neg = np.asarray(positives)[:, None], np.asarray(negatives)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def test_every_held_out_domain_is_read_exactly_and_never_in_training_scenes():
    from conceptkit.core.world.checkers import read_domain
    from conceptkit.core.world.scenes import style_renders
    from conceptkit.core.world.vocabulary import HELDOUT_DOMAINS

    for domain in HELDOUT_DOMAINS:
        renders = style_renders(100, seed=1, domain=domain)
        assert all(read_domain(image) == domain for image in renders), domain
    images, captions = training_batch(5, 0, 200)
    assert not any(read_domain(image) for image in images)
    assert not any(domain in caption for caption in captions for domain in HELDOUT_DOMAINS)


def test_identity_vectors_give_each_creature_its_point_near_creatures_that_look_alike():
    from identity_vectors import IdentityBasis

    from conceptkit.core.world.render import creature_traits

    basis = IdentityBasis(creatures=512)
    seeds = list(range(200))
    vectors = basis.vectors(seeds, norm=0.25)
    assert torch.equal(vectors[:3], basis.vectors(seeds[:3], norm=0.25))  # a pure function of the creature
    assert abs(float(vectors.norm(dim=1).mean()) - 0.25) < 0.05  # at the norm asked for
    colours = [creature_traits(s).colour for s in seeds]
    distance = torch.cdist(vectors, vectors)
    same = np.array([[a == b for b in colours] for a in colours]) & ~np.eye(len(seeds), dtype=bool)
    different = np.array([[a != b for b in colours] for a in colours])
    # nearer, but only a little: whitened, every one of the 128 directions weighs the same and body colour, the
    # largest difference to the eye, spans about 3 of them
    assert float(distance[torch.from_numpy(same)].mean()) < float(distance[torch.from_numpy(different)].mean())


def test_partly_whitened_identity_vectors_keep_body_colour_in_more_of_the_norm():
    from identity_vectors import IdentityBasis

    from conceptkit.core.world.render import creature_traits

    seeds = list(range(200))
    colours = np.array([creature_traits(s).colour for s in seeds])
    same = torch.from_numpy((colours[:, None] == colours[None]) & ~np.eye(len(seeds), dtype=bool))
    different = torch.from_numpy(colours[:, None] != colours[None])

    def same_colour_closeness(whitening: float) -> float:  # same-colour distance over other-colour distance
        vectors = IdentityBasis(creatures=512, whitening=whitening).vectors(seeds, norm=0.25)
        assert abs(float(vectors.norm(dim=1).mean()) - 0.25) < 0.05  # at the norm asked for, whatever the power
        distance = torch.cdist(vectors, vectors)
        return float(distance[same].mean() / distance[different].mean())

    assert torch.equal(IdentityBasis(creatures=512).vectors(seeds[:5], 0.25),
                       IdentityBasis(creatures=512, whitening=1.0).vectors(seeds[:5], 0.25))  # the shipped code
    assert same_colour_closeness(0.5) < same_colour_closeness(1.0) - 0.03


def test_identity_scene_batches_draw_the_configured_share_of_pairs_and_replay_exactly():
    from train_model import identity_scene_index

    seeds = torch.full((100, 2), -1)
    seeds[:, 0] = torch.arange(100)
    seeds[:30, 1] = torch.arange(1000, 1030)  # 30 scenes of two creatures
    uniform = identity_scene_index({}, seeds, 31, 7, 10, 0)
    assert torch.equal(uniform, identity_scene_index({}, seeds, 31, 7, 10, 0))
    weighted = [identity_scene_index({"pair_share": 0.7}, seeds, 31, step, 10, 0) for step in range(20)]
    assert all(int((seeds[i, 1] >= 0).sum()) == 7 for i in weighted)
    assert torch.equal(weighted[5], identity_scene_index({"pair_share": 0.7}, seeds, 31, 5, 10, 0))
    assert len(set(torch.cat(weighted).tolist())) > 60  # epoch-wise permutations: every scene comes round


def test_identity_scene_batches_draw_the_configured_share_of_atypical_creatures_and_replay_exactly():
    from train_model import identity_scene_index

    seeds = torch.full((100, 2), -1)
    seeds[:, 0] = torch.arange(100)
    atypical = torch.arange(100) >= 80  # 20 scenes with an atypical creature
    config = {"atypical_share": 0.5}
    drawn = [identity_scene_index(config, seeds, 31, step, 10, 0, atypical) for step in range(20)]
    assert all(int(atypical[i].sum()) >= 5 for i in drawn)  # half from them, the rest from all scenes
    assert torch.equal(drawn[3], identity_scene_index(config, seeds, 31, 3, 10, 0, atypical))
    assert len(set(torch.cat(drawn).tolist())) > 60
    with pytest.raises(ValueError, match="not both"):  # one share decides a batch: the other would go unheard
        identity_scene_index({**config, "pair_share": 0.7}, seeds, 31, 3, 10, 0, atypical)


def test_the_unsaid_mix_draws_objects_anywhere_without_saying_where_and_never_names_a_held_out_place():
    from conceptkit.core.world.checkers import read_domain
    from conceptkit.core.world.scenes import MIXES
    from conceptkit.core.world.vocabulary import HELDOUT_PLACES, POSITION_PHRASES, UNSAID

    def says_a_place(caption):
        return any(phrase in caption for phrase in POSITION_PHRASES.values())

    _, captions = training_batch(5, 0, 200, MIXES["third_edition"])
    assert all(says_a_place(c) for c in captions)
    images, captions = training_batch(5, 0, 600, MIXES["third_edition_unsaid"])
    unsaid = [i for i, c in enumerate(captions) if not says_a_place(c)]
    assert 0.09 < len(unsaid) / len(captions) < 0.17
    assert not any(place in caption for caption in captions for place in HELDOUT_PLACES)
    rng = np.random.default_rng(2)
    scenes = [random_scene(rng, "train", MIXES["third_edition_unsaid"]) for _ in range(3000)]
    anchors = np.array([o.anchor for s in scenes for o in s.objects if o.position == UNSAID])
    assert anchors.min() <= 12 and anchors.max() >= 52  # corners included
    corner = [s for s in scenes
              if s.objects[0].position == UNSAID and max(abs(a - 13) for a in s.objects[0].anchor) <= 3]
    assert corner and all(read_domain(s.render()) == "top_left" for s in corner)  # drawn where the anchor is


def test_pair_prompts_name_the_left_or_top_subject_first_as_every_two_object_caption_of_training_does():
    """The world never saw "X on the right and Y on the left": it draws the first-named creature on the left, so a
    pair prompt in that order would score a faithful model as blending. Either subject takes the first place."""
    from conceptkit.core.world.subjects import pair_scenes, subject_seed

    trained = [random_scene(np.random.default_rng([3, i]), "pairs").caption() for i in range(300)]
    assert any(" on the left and " in c for c in trained) and any(" at the top and " in c for c in trained)
    assert not any(" on the right and " in c or " at the bottom and " in c for c in trained)
    scenes = pair_scenes((0, "<s0> creature"), (1, "<s1> creature"), 24)
    assert all(s.objects[0].position in ("left", "top") for s in scenes)
    assert {s.objects[0].instance for s in scenes} == {subject_seed(0), subject_seed(1)}
    assert scenes[0].caption().startswith(("a <s0> creature ", "a <s1> creature "))
    named = pair_scenes((0, "<s0>"), (1, "<s1>"), 4, named=True)
    assert named[0].caption().startswith(("<s0> on the left and <s1>", "<s1> on the left and <s0>",
                                          "<s0> at the top and <s1>", "<s1> at the top and <s0>"))


def test_cut_mix_composites_show_both_subjects_at_their_captioned_places_cut_from_their_own_renders():
    """The learned-pair gate's composites: each subject cut from one of its 4 training renders (its pixels, not a
    fresh drawing) and put where the caption says, the left or top one named first; the world's pair reader sees
    both present, each half its own subject, none blended."""
    from conceptkit.core.world.metrics import pair_fidelity
    from conceptkit.core.world.subjects import cut_mix_renders, reference_renders, subject_seed, training_renders

    given = {s: training_renders(s)[0] for s in (2, 3)}
    images, scenes = cut_mix_renders(given, 8)
    assert images.shape == (8, 64, 64, 3) and images.dtype == np.uint8
    captions = [s.caption() for s in scenes]
    assert captions[0].startswith("a {first} on the left and a {second} on the right, ")
    assert captions[1].startswith("a {first} at the top and a {second} at the bottom, ")
    assert captions[2].startswith("a {second} on the left and a {first} on the right, ")
    scored = pair_fidelity(images, scenes, {subject_seed(s): reference_renders(s) for s in (2, 3)})
    assert scored["both_present"] == 1.0 and scored["homogenization"] == 0.0 and scored["pair_fidelity"] > 0.8
    own_colours = {tuple(p) for renders in given.values() for p in renders.reshape(-1, 3)}
    for image, scene in zip(images, scenes, strict=True):
        backdrop = np.array(scene.render()[0, 0])  # the plain background's colour
        painted = {tuple(p) for p in image.reshape(-1, 3) if (p != backdrop).any()}
        assert painted <= own_colours
