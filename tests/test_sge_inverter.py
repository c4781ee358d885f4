"""SGE Inverter (CRDI): inversion leaves the model untouched and resumes exactly, the embeddings steer generation,
one seed gives one image, the set file, the window on other schedules, the nodes, and the bad inputs the issue
names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conceptkit import NODE_CLASS_MAPPINGS
from conceptkit.core.errors import Cancelled, ConceptKitError, InputError
from conceptkit.core.methods.sge_inverter import (
    InvertSettings,
    SGESet,
    invert,
    load_sge,
    map_window,
    sample_sge,
    save_sge,
)
from conceptkit.core.model import EMBEDDED, load_model
from conceptkit.core.sampling.preview import decode_latents
from conceptkit.core.sampling.schedulers import make_scheduler
from conceptkit.core.world.checkers import read_domain
from conceptkit.core.world.metrics import as_uint8
from conceptkit.core.world.scenes import style_renders

SMALL = dict(steps=8, window=(2, 5), epochs=3)  # 3 segments x 3 epochs: a few seconds


@pytest.fixture(scope="module")
def world():
    return load_model(EMBEDDED)


@pytest.fixture(scope="module")
def domain():
    return torch.from_numpy(style_renders(3)).float() / 255  # [3, 64, 64, 3], ComfyUI's layout


@pytest.fixture(scope="module")
def sge(world, domain):
    return invert(world, domain, InvertSettings(**SMALL))


def weights(model) -> dict[str, torch.Tensor]:
    modules = {"unet": model.unet, "vae": model.vae, **{f"text{i}": e for i, e in enumerate(model.text_encoders)}}
    return {f"{part}.{k}": v.detach().clone() for part, module in modules.items()
            for k, v in module.state_dict().items()}


def test_inversion_and_generation_leave_the_model_bitwise_unchanged(world, domain):
    before = weights(world)
    sge = invert(world, domain, InvertSettings(**SMALL, seed=1))
    sample_sge(world, sge, count=2, seed=0)
    after = weights(world)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_an_interrupted_inversion_resumed_equals_an_uninterrupted_one(world, domain, tmp_path):
    settings = InvertSettings(**SMALL, seed=2, checkpoint_every=0)
    straight = invert(world, domain, settings)
    calls = {"n": 0}

    def cancel_at_step_4():
        calls["n"] += 1
        return calls["n"] == 5  # asked before each step: steps 0-3 run, then Cancel

    with pytest.raises(Cancelled, match="resume"):
        invert(world, domain, settings, checkpoint_dir=tmp_path, cancel=cancel_at_step_4)
    assert [p.name for p in tmp_path.glob("step_*")] == ["step_4"]
    resumed = invert(world, domain, settings, checkpoint_dir=tmp_path)
    assert torch.equal(resumed.sge, straight.sge)
    assert not list(tmp_path.glob("step_*"))  # a finished inversion removes its checkpoint


def test_inversion_reports_every_step_with_previews_of_its_current_estimate_within_their_budget(world, domain):
    """A preview (the first target's x0_hat: one VAE decode, about one denoiser pass) costs at most a tenth of the
    inversion: here an epoch is 3 forward passes (3 targets, 1 step per segment), so about every third step."""
    seen = []
    invert(world, domain, InvertSettings(**SMALL), progress=lambda step, total, preview: seen.append((step, total,
                                                                                                       preview())))
    assert [(step, total) for step, total, _ in seen] == [(i, 9) for i in range(1, 10)]  # 3 segments x 3 epochs
    shown = [image for _, _, image in seen if image is not None]
    assert 2 <= len(shown) <= 3 and all(image.size == (64, 64) for image in shown)


def test_a_segment_ends_once_its_loss_settles_and_a_resumed_inversion_ends_where_a_straight_one_does(world, domain,
                                                                                                     tmp_path):
    every = invert(world, domain, InvertSettings(**{**SMALL, "epochs": 40}, settle=0.0))
    assert every.parameters["segment_epochs"] == [40, 40, 40]
    settings = InvertSettings(**{**SMALL, "epochs": 40}, settle=0.2, checkpoint_every=0)
    straight = invert(world, domain, settings)
    ran = straight.parameters["segment_epochs"]
    assert len(ran) == 3 and min(ran) >= 20 and sum(ran) < 120  # some settled before the cap, none before 20
    calls = {"n": 0}

    def cancel_in_the_second_segment():
        calls["n"] += 1
        return calls["n"] == ran[0] + 3

    with pytest.raises(Cancelled):
        invert(world, domain, settings, checkpoint_dir=tmp_path, cancel=cancel_in_the_second_segment)
    resumed = invert(world, domain, settings, checkpoint_dir=tmp_path)
    assert resumed.parameters["segment_epochs"] == ran and torch.equal(resumed.sge, straight.sge)


@pytest.mark.parametrize("q_noise,bound", [("fixed", 0.4), ("random", 0.85)])
def test_the_embeddings_steer_generation_toward_their_target(world, q_noise, bound):
    """One target, its own row and no relaxing: the target comes back (as the VAE draws it: its reconstruction is
    the best any latent model can do), far closer than from the same start without embeddings. Learned on one fixed
    noise and started from it, nearly exactly; learned on fresh noises (the official run) and started from a fresh
    one, less so: the embeddings then carry what every noise needs, not one noise's correction."""
    target = torch.from_numpy(style_renders(1, seed=3)).float() / 255
    sge = invert(world, target, InvertSettings(steps=8, window=(0, 6), epochs=60, q_noise=q_noise))
    none = SGESet(torch.zeros_like(sge.sge), sge.targets, sge.window, sge.scale, sge.prompt, sge.cfg, sge.family,
                  sge.base_fingerprint, parameters=sge.parameters)
    guided = sample_sge(world, sge, count=1, seed=0, relax=0.0).images
    unguided = sample_sge(world, none, count=1, seed=0, relax=0.0).images
    drawn = decode_latents(world, sge.targets)
    assert (guided - drawn).abs().mean() < bound * (unguided - drawn).abs().mean()


def test_one_seed_gives_one_image_whatever_the_count(world, sge):
    batch = sample_sge(world, sge, count=3, seed=10).images
    single = sample_sge(world, sge, count=1, seed=11).images
    assert torch.allclose(batch[1], single[0], atol=1e-5)
    assert not torch.allclose(batch[0], batch[1], atol=1e-2)


def test_the_set_file_keeps_what_it_was_made_for_and_draws_the_same_images(world, sge, tmp_path):
    path = save_sge(sge, tmp_path / "domain.safetensors")
    loaded = load_sge(path)
    assert (loaded.window, loaded.scale, loaded.prompt, loaded.base_fingerprint) == (
        sge.window, sge.scale, sge.prompt, world.fingerprint())
    assert loaded.parameters["epochs"] == SMALL["epochs"] and loaded.sge.shape == (3, 3, 4, 16, 16)
    drawn = sample_sge(world, loaded, count=2, seed=4).images
    assert torch.equal(drawn, sample_sge(world, sge, count=2, seed=4).images)


def test_the_window_is_carried_to_the_schedule_by_step_or_by_noise_level(world):
    scheduler = make_scheduler(world.scheduler_config, "ddim")
    scheduler.set_timesteps(25)
    by_step = map_window(scheduler.timesteps, scheduler.alphas_cumprod, "step")
    by_noise = map_window(scheduler.timesteps, scheduler.alphas_cumprod, "noise")
    assert (by_step.start, by_step.end) == (5, 20)  # the official steps
    assert (by_noise.start, by_noise.end) == (7, 25)  # the world keeps more signal: the noise-level window is higher
    top = float(scheduler.alphas_cumprod[int(scheduler.timesteps[by_noise.first_loop_index])].sqrt())
    assert top < 0.1  # starts about as noisy as the paper's (0.04 at its step 19, t = 791)
    scheduler.set_timesteps(50)
    assert map_window(scheduler.timesteps, scheduler.alphas_cumprod, "step").end == 40


def test_the_official_window_sits_where_guided_diffusions_respacing_puts_it():
    from conceptkit.core.methods.sge_inverter.window import official_timestep

    assert [official_timestep(i) for i in (0, 5, 19, 24)] == [0, 208, 791, 999]


def test_a_v_prediction_model_gets_the_same_embeddings_as_its_epsilon_twin(world, domain):
    """The offset is applied to eps: a v-prediction model's output is converted, guided, and converted back."""
    twin = load_model(EMBEDDED, prediction_type="v_prediction")
    alphas = make_scheduler(world.scheduler_config, "ddim").alphas_cumprod

    def as_v(module, args, kwargs, output):
        x, t = args[0], args[1]
        a = alphas[torch.as_tensor(t).long().cpu()].reshape(-1, 1, 1, 1).to(x)
        eps = output[0]
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return (a.sqrt() * eps - (1 - a).sqrt() * x0, *output[1:])

    handle = twin.unet.register_forward_hook(as_v, with_kwargs=True)
    try:
        settings = InvertSettings(**SMALL)
        reference = invert(world, domain, settings)
        converted = invert(twin, domain, settings)
        assert torch.allclose(converted.sge, reference.sge, atol=1e-3)
        assert converted.prediction_type == "v_prediction"
        images = sample_sge(twin, converted, count=1, seed=0).images
        assert torch.allclose(images, sample_sge(world, reference, count=1, seed=0).images, atol=2e-3)
    finally:
        handle.remove()


@pytest.mark.parametrize("count", [0, 11])
def test_no_images_or_more_than_ten_is_a_clear_error(world, count):
    images = torch.rand(count, 64, 64, 3)
    with pytest.raises(InputError, match="1 to 10 images"):
        invert(world, images, InvertSettings(**SMALL))


def test_images_of_mixed_sizes_are_a_clear_error(world):
    images = [np.zeros((64, 64, 3), np.float32), np.zeros((48, 48, 3), np.float32)]
    with pytest.raises(InputError, match="different sizes.*64x64, 48x48|different sizes.*48x48, 64x64"):
        invert(world, images, InvertSettings(**SMALL))


def test_an_sge_set_for_another_model_is_refused_with_the_fix(world, sge, tiny_parts, tmp_path):
    other = SGESet(sge.sge, sge.targets, sge.window, sge.scale, sge.prompt, sge.cfg, sge.family, "0" * 16)
    with pytest.raises(InputError, match="another world model.*Invert the images again"):
        sample_sge(world, other, count=1)
    sd1 = SGESet(sge.sge, sge.targets, sge.window, sge.scale, sge.prompt, sge.cfg, "sd1", sge.base_fingerprint)
    with pytest.raises(InputError, match="inverted on a sd1 model"):
        sample_sge(world, sd1, count=1)


def test_a_damaged_or_foreign_file_is_a_clear_error(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(ConceptKitError, match="not a ConceptKit SGE set"):
        load_sge(plain)
    pickled = tmp_path / "pickled.safetensors"
    torch.save({"sge": torch.zeros(2)}, pickled)
    with pytest.raises(ConceptKitError, match="pickled.safetensors"):
        load_sge(pickled)


def test_the_nodes_invert_save_load_and_sample_under_comfyuis_inference_mode(world, tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTKIT_MODELS_DIR", str(tmp_path))
    nodes = {name: cls() for name, cls in NODE_CLASS_MAPPINGS.items()}
    (images,) = nodes["ConceptKitWorldDomain"].render(count=3, seed=0)
    assert images.shape == (3, 64, 64, 3)
    assert [read_domain(image) for image in as_uint8(images)] == ["top_left"] * 3
    with torch.inference_mode():
        (sge,) = nodes["ConceptKitSGEInverter"].invert(world, images, steps=8, window="step", window_start=2,
                                                       window_end=5, scale=2.0, epochs=2, seed=0)
        result = nodes["ConceptKitSaveSGE"].save(sge, "my_domain", "counter")
        again = nodes["ConceptKitSaveSGE"].save(sge, "my_domain", "counter")
        (loaded,) = nodes["ConceptKitLoadSGE"].load("my_domain.safetensors")
        (out,) = nodes["ConceptKitSGESample"].generate(world, loaded, count=2, seed=0, relax=0.05)
    assert Path(result["ui"]["text"][0]).name == "my_domain.safetensors"
    assert Path(again["ui"]["text"][0]).name == "my_domain_00002.safetensors"
    assert out.shape == (2, 64, 64, 3) and torch.isfinite(out).all()
    assert NODE_CLASS_MAPPINGS["ConceptKitSaveSGE"].VALIDATE_INPUTS("../escape") is not True


@pytest.mark.parametrize("damage,words", [
    (lambda t: {"sge": t["sge"][:0], "targets": t["targets"][:0]}, "holds no images"),
    (lambda t: {**t, "sge": t["sge"].clone().fill_(float("nan"))}, "not numbers"),
    (lambda t: {**t, "targets": t["targets"].clone().fill_(float("inf"))}, "not numbers"),
])
def test_an_sge_file_with_no_images_or_nan_is_refused_at_load_not_drawn_black(sge, tmp_path, damage, words):
    from conceptkit.core.safetensors_io import load_safetensors, read_safetensors_metadata

    good = save_sge(sge, tmp_path / "good.safetensors")
    bad = tmp_path / "bad.safetensors"
    save_file(damage(load_safetensors(good)), str(bad), metadata=read_safetensors_metadata(good))
    with pytest.raises(ConceptKitError, match=words):
        load_sge(bad)


def test_an_sge_set_with_nan_given_to_the_sample_node_is_refused(world, sge):
    from dataclasses import replace

    with pytest.raises(InputError, match="not numbers"):
        replace(sge, scale=float("nan"))
