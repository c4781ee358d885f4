"""The sampling loop's extension points, through `sample()`: img2img from a given step, per-step alpha-bar,
predicted x0 and per-image generators, per-sample token rows, and the cross-attention store."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline

from conceptkit.core.errors import InputError
from conceptkit.core.model import add_patch, load_model
from conceptkit.core.sampling import CFG, AttentionStore, make_scheduler, sample

SIZE = dict(width=32, height=32)


@pytest.fixture(scope="module")
def sd1(models_dir):
    return load_model(models_dir / "diffusers" / "tiny_sd1", device="cpu")


@pytest.fixture(scope="module")
def world():
    return load_model(device="cpu")


def _latents(model, batch=1, seed=5):
    shape = (batch, model.latent_channels, 32 // model.vae_scale_factor, 32 // model.vae_scale_factor)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_img2img_from_step_k_is_diffusers_img2img_at_the_matching_strength(sampler, sd1, models_dir):
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(models_dir / "diffusers" / "tiny_sd1", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(sd1.scheduler_config, sampler)
    init, steps, start = _latents(sd1), 10, 4
    expected = pipe("a red cat", image=init, strength=(steps - start) / steps, num_inference_steps=steps,
                    guidance_scale=6.0, generator=torch.Generator().manual_seed(11), output_type="pt").images
    got = sample(sd1, "a red cat", seed=11, steps=steps, sampler=sampler, guidance=CFG(6.0), init_latents=init,
                 start_step=start, **SIZE).images
    torch.testing.assert_close(got, expected.permute(0, 2, 3, 1), atol=1e-4, rtol=0)
    from_noise = sample(sd1, "a red cat", seed=11, steps=steps, sampler=sampler, guidance=CFG(6.0), **SIZE).images
    assert (got - from_noise).abs().max() > 1e-2  # the given latents shape the image


def test_img2img_inputs_are_checked(sd1):
    with pytest.raises(InputError, match="start_step"):
        sample(sd1, "a cat", steps=4, start_step=4, init_latents=_latents(sd1), **SIZE)
    with pytest.raises(InputError, match="init_latents have shape"):
        sample(sd1, "a cat", steps=4, start_step=1, init_latents=_latents(sd1, batch=2), **SIZE)


@dataclass(frozen=True)
class RecordingCFG(CFG):
    """CFG that keeps what each step saw, and draws a little noise from each image's own generator."""

    seen: list = None
    jitter: float = 0.0

    def __call__(self, denoise, x, t, cond, uncond, step):
        out = super().__call__(denoise, x, t, cond, uncond, step)
        if self.jitter:
            out = out + self.jitter * torch.stack([torch.randn(out.shape[1:], generator=g) for g in step.generators])
        self.seen.append({"step": step, "x": x.clone(), "out": out.clone()})
        return out

    def after_step(self, step, latents, pred_x0):
        self.seen[-1]["pred_x0"] = pred_x0.clone()


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_each_step_tells_its_alpha_bar_and_the_predicted_x0(sampler, sd1):
    seen = []
    sample(sd1, "a cat", seed=3, steps=5, sampler=sampler, guidance=RecordingCFG(5.0, seen), batch_size=2, **SIZE)
    scheduler = make_scheduler(sd1.scheduler_config, sampler)
    assert [s["step"].index for s in seen] == list(range(5)) and len(seen[0]["step"].generators) == 2
    for record in seen:
        alpha_bar = scheduler.alphas_cumprod[int(record["step"].timestep)]
        assert torch.equal(record["step"].alpha_bar, alpha_bar)
        x0 = (record["x"] - (1 - alpha_bar).sqrt() * record["out"]) / alpha_bar.sqrt()
        torch.testing.assert_close(record["pred_x0"], x0, atol=1e-5, rtol=1e-5)


def test_randomness_from_each_images_generator_keeps_one_seed_one_image(sd1):
    def run(seed, batch):
        return sample(sd1, "a cat", seed=seed, steps=4, guidance=RecordingCFG(5.0, [], jitter=0.3),
                      batch_size=batch, **SIZE).images

    pair = run(5, 2)
    torch.testing.assert_close(pair, torch.cat([run(5, 1), run(6, 1)]), atol=1e-5, rtol=0)
    assert (pair - sample(sd1, "a cat", seed=5, steps=4, guidance=CFG(5.0), batch_size=2, **SIZE).images
            ).abs().max() > 1e-3


@dataclass(frozen=True)
class PerSampleToken:
    """A trigger whose vector is one row per prompt of the batch (as E4T's e* per image)."""

    rows: torch.Tensor  # [B, dim]
    triggers: tuple[str, ...] = ("<p>",)

    def enter(self, model, state):
        state.add_token("<p>", [self.rows], [None])


def test_a_batch_with_two_per_sample_rows_equals_two_batches_of_one_row(world):
    dim = world.text_encoders[0].get_input_embeddings().weight.shape[1]
    rows = torch.randn(2, dim, generator=torch.Generator().manual_seed(0))
    prompts = ["a <p> creature on the left, red background", "a <p> creature on the right, blue background"]
    both = sample(add_patch(world, PerSampleToken(rows)), prompts, seed=4, steps=5, guidance=CFG(5.0)).images
    one = [sample(add_patch(world, PerSampleToken(rows[i:i + 1])), prompts[i], seed=4 + i, steps=5,
                  guidance=CFG(5.0)).images for i in range(2)]
    torch.testing.assert_close(both, torch.cat(one), atol=1e-5, rtol=0)
    swapped = sample(add_patch(world, PerSampleToken(rows.flip(0))), prompts, seed=4, steps=5, guidance=CFG(5.0))
    assert (swapped.images - both).abs().max() > 1e-3  # each prompt read its own row
    with pytest.raises(InputError, match="one row per prompt"):
        sample(add_patch(world, PerSampleToken(rows)), prompts[0], batch_size=3, steps=2)


def test_the_attention_store_records_softmax_maps_that_match_a_hand_computation(sd1):
    captured = {}
    layer = next(n for n, m in sd1.unet.named_modules() if n.endswith("attn2"))
    attn = sd1.unet.get_submodule(layer)

    def capture(module, args, kwargs):
        captured.setdefault("inputs", (args[0] if args else kwargs["hidden_states"], kwargs["encoder_hidden_states"]))

    handle = attn.register_forward_pre_hook(capture, with_kwargs=True)
    store = AttentionStore(steps=[0])
    try:
        stored = sample(sd1, "a red cat", seed=2, steps=3, guidance=CFG(5.0), attention=store, **SIZE).images
    finally:
        handle.remove()
    plain = sample(sd1, "a red cat", seed=2, steps=3, guidance=CFG(5.0), **SIZE).images
    assert torch.equal(stored, plain)  # recording does not change the images
    assert list(store.maps) == [0] and all(name.endswith("attn2") for name in store.maps[0])
    maps = store.maps[0][layer]
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]), atol=1e-5, rtol=0)
    hidden, context = captured["inputs"]
    with torch.no_grad():
        q, k = attn.to_q(hidden), attn.to_k(context)
        b, n, _ = q.shape
        q = q.reshape(b, n, attn.heads, -1).transpose(1, 2)
        k = k.reshape(b, k.shape[1], attn.heads, -1).transpose(1, 2)
        by_hand = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1).mean(1)
    torch.testing.assert_close(maps, by_hand, atol=1e-5, rtol=0)
    chosen = AttentionStore(tokens=[1, 2])
    sample(sd1, "a red cat", seed=2, steps=2, guidance=CFG(5.0), attention=chosen, **SIZE)
    assert sorted(chosen.maps) == [0, 1] and chosen.maps[0][layer].shape[-1] == 2
    assert not any(type(p).__name__ == "_RecordingProcessor" for p in sd1.unet.attn_processors.values())
