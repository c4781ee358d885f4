"""Shared fixtures: small random models of the real SD 1.x / 2.x / SDXL architectures, built once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))  # the helpers package beside the tests
sys.path.insert(0, str(Path(__file__).parents[1] / "tools" / "world"))  # the world's build scripts

from helpers import ldm_layout, tiny_models  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_parts():
    """family -> diffusers/transformers modules of a tiny model (read-only: do not modify)."""
    return {family: tiny_models.build(family) for family in ("sd1", "sd2", "sdxl")}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, tiny_parts) -> Path:
    """A models folder laid out like ComfyUI's: diffusers/<family>, checkpoints/<family>.safetensors,
    clip_tokenizer/."""
    root = tmp_path_factory.mktemp("models")
    for family, parts in tiny_parts.items():
        tiny_models.save_diffusers_folder(parts, root / "diffusers" / f"tiny_{family}")
        (root / "checkpoints").mkdir(exist_ok=True)
        save_file(ldm_layout.to_ldm_checkpoint(family, parts), str(root / "checkpoints" / f"tiny_{family}.safetensors"))
    tiny_models.write_tokenizer(root / "clip_tokenizer")
    return root
