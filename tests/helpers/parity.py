"""Output parity of a loaded model with the diffusers/transformers modules it was made from."""

from __future__ import annotations

import torch


def _unet_inputs(parts, batch=2):
    torch.manual_seed(1)
    unet = parts["unet"]
    x = torch.randn(batch, 4, 16, 16)
    t = torch.tensor([900, 15][:batch])
    context = torch.randn(batch, 7, unet.config.cross_attention_dim)
    added = None
    if unet.config.addition_embed_type == "text_time":
        pooled = parts["text_encoders"][-1].config.projection_dim
        added = {"text_embeds": torch.randn(batch, pooled), "time_ids": torch.randn(batch, 6)}
    return x, t, context, added


@torch.no_grad()
def assert_same_model(loaded, parts, atol=1e-5):
    x, t, context, added = _unet_inputs(parts)
    expected = parts["unet"](x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
    got = loaded.unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)

    image = torch.rand(1, 3, 32, 32) * 2 - 1
    expected = parts["vae"].decode(parts["vae"].encode(image).latent_dist.mean).sample
    got = loaded.vae.decode(loaded.vae.encode(image).latent_dist.mean).sample
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)

    ids = torch.randint(0, parts["text_encoders"][0].config.vocab_size - 2, (2, 77))
    assert len(loaded.text_encoders) == len(parts["text_encoders"])
    for original, converted in zip(parts["text_encoders"], loaded.text_encoders, strict=True):
        a, b = original(ids, output_hidden_states=True), converted(ids, output_hidden_states=True)
        torch.testing.assert_close(b[0], a[0], atol=atol, rtol=0)
        torch.testing.assert_close(b.hidden_states[-2], a.hidden_states[-2], atol=atol, rtol=0)
