"""The sampling loop gives the images diffusers' own pipelines give, per-image seeds, progress and Cancel."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image

from conceptkit.core.errors import Cancelled, InputError, ModelLoadError
from conceptkit.core.model import load_model
from conceptkit.core.sampling import CFG, make_scheduler, sample

SIZE = dict(width=32, height=32)


@pytest.fixture(scope="module")
def sd1(models_dir):
    return load_model(models_dir / "diffusers" / "tiny_sd1", device="cpu")


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m"])
def test_reproduces_stable_diffusion_pipeline(sampler, sd1, models_dir):
    pipe = StableDiffusionPipeline.from_pretrained(models_dir / "diffusers" / "tiny_sd1", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(sd1.scheduler_config, sampler)
    expected = pipe("a red cat on the left", negative_prompt="blue", num_inference_steps=8, guidance_scale=6.0,
                    generator=torch.Generator().manual_seed(11), output_type="pt", **SIZE).images
    got = sample(sd1, "a red cat on the left", negative_prompt="blue", seed=11, steps=8, sampler=sampler,
                 guidance=CFG(6.0), **SIZE).images
    assert got.shape == (1, 32, 32, 3)
    torch.testing.assert_close(got, expected.permute(0, 2, 3, 1), atol=1e-4, rtol=0)


def test_reproduces_stable_diffusion_xl_pipeline(models_dir):
    model = load_model(models_dir / "diffusers" / "tiny_sdxl", device="cpu")
    pipe = StableDiffusionXLPipeline.from_pretrained(models_dir / "diffusers" / "tiny_sdxl", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a blue star", num_inference_steps=6, guidance_scale=5.0,
                    generator=torch.Generator().manual_seed(4), output_type="pt", **SIZE).images
    got = sample(model, "a blue star", seed=4, steps=6, sampler="euler", guidance=CFG(5.0), **SIZE).images
    torch.testing.assert_close(got, expected.permute(0, 2, 3, 1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("sampler", ["ddim", "euler_ancestral"])
def test_same_seed_same_image_in_batch_of_1_and_4(sampler, sd1):
    batch = sample(sd1, "a green dog", seed=100, steps=6, batch_size=4, sampler=sampler, **SIZE)
    assert batch.seeds == [100, 101, 102, 103]
    for position in (0, 2):
        alone = sample(sd1, "a green dog", seed=100 + position, steps=6, batch_size=1, sampler=sampler, **SIZE)
        torch.testing.assert_close(alone.images[0], batch.images[position], atol=1e-4, rtol=0)
    assert (batch.images[0] - batch.images[1]).abs().max() > 0.01  # different seeds, different images


def test_prompt_list_gives_one_image_per_prompt(sd1):
    out = sample(sd1, ["a red cat", "a blue dog"], seed=5, steps=4, **SIZE)
    alone = sample(sd1, "a blue dog", seed=6, steps=4, **SIZE)
    assert out.images.shape[0] == 2
    torch.testing.assert_close(out.images[1], alone.images[0], atol=1e-4, rtol=0)


def test_negative_prompt_changes_the_image(sd1):
    plain = sample(sd1, "a red cat", seed=1, steps=4, **SIZE).images
    steered = sample(sd1, "a red cat", negative_prompt="green background", seed=1, steps=4, **SIZE).images
    assert (plain - steered).abs().max() > 1e-3


def test_sd2_v_prediction_and_single_file_sdxl_sample(models_dir):
    tokenizer = models_dir / "clip_tokenizer"
    for family in ("sd2", "sdxl"):
        model = load_model(models_dir / "checkpoints" / f"tiny_{family}.safetensors", tokenizer_dir=tokenizer)
        out = sample(model, "a star", seed=0, steps=3, **SIZE)
        assert out.images.shape == (1, 32, 32, 3) and torch.isfinite(out.images).all()
        assert 0.0 <= out.images.min() and out.images.max() <= 1.0


def test_progress_reports_every_step_with_a_preview(sd1):
    calls = []
    sample(sd1, "a cat", seed=0, steps=5, progress=lambda i, n, preview: calls.append((i, n, preview())), **SIZE)
    assert [(i, n) for i, n, _ in calls] == [(i, 5) for i in range(1, 6)]
    assert all(isinstance(p, Image.Image) and p.size == (32, 32) for *_, p in calls)


def test_cancel_stops_within_a_step(sd1):
    steps_done = []

    def cancel():
        return len(steps_done) >= 2

    with pytest.raises(Cancelled, match="step 2 of 10"):
        sample(sd1, "a cat", seed=0, steps=10, progress=lambda i, n, p: steps_done.append(i), cancel=cancel, **SIZE)
    assert steps_done == [1, 2]


def test_bad_sizes_and_counts_are_explained(sd1):
    with pytest.raises(InputError, match="width 30 .* multiple of 4"):
        sample(sd1, "a cat", width=30, height=32)
    with pytest.raises(InputError, match="steps"):
        sample(sd1, "a cat", steps=0, **SIZE)
    with pytest.raises(InputError, match="batch_size"):
        sample(sd1, "a cat", batch_size=0, **SIZE)
    with pytest.raises(InputError, match="sampler 'heun2'"):
        sample(sd1, "a cat", sampler="heun2", **SIZE)


def test_embedded_model_missing_is_a_clear_error_until_it_ships():
    from conceptkit.core.model.loading import EMBEDDED_DIR

    if (EMBEDDED_DIR / "model_index.json").exists():
        pytest.skip("the embedded model ships in this copy")
    with pytest.raises(ModelLoadError, match="embedded world model is not part of this copy"):
        load_model()
