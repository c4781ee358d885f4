"""The model service loads every source a user has, and refuses unsafe or broken files clearly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from conceptkit.core.errors import ModelLoadError, UnsafeFileError
from conceptkit.core.model import load_model

from helpers.parity import assert_same_model


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_single_file_checkpoint_converts_to_the_same_model(family, models_dir, tiny_parts):
    loaded = load_model(models_dir / "checkpoints" / f"tiny_{family}.safetensors",
                        tokenizer_dir=models_dir / "clip_tokenizer", device="cpu")
    assert loaded.family == family
    assert loaded.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    assert_same_model(loaded, tiny_parts[family])


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_diffusers_folder_loads_with_family_detected(family, models_dir, tiny_parts):
    loaded = load_model(models_dir / "diffusers" / f"tiny_{family}", device="cpu")
    assert loaded.family == family
    assert_same_model(loaded, tiny_parts[family])


def test_sd2_epsilon_override(models_dir):
    loaded = load_model(models_dir / "checkpoints" / "tiny_sd2.safetensors",
                        tokenizer_dir=models_dir / "clip_tokenizer", prediction_type="epsilon")
    assert loaded.prediction_type == "epsilon"


def test_dtype_option_casts_weights(models_dir):
    loaded = load_model(models_dir / "diffusers" / "tiny_sd1", dtype="bf16")
    assert loaded.unet.dtype == torch.bfloat16 and loaded.text_encoders[0].dtype == torch.bfloat16


def test_auto_precision_is_fp32_on_a_cpu_and_half_on_a_gpu_where_the_family_supports_it(models_dir):
    """The default everywhere a precision is chosen: a CPU never gets fp16 (many times slower, Cancel waits)."""
    from conceptkit.core.model.loading import resolve_dtype
    from conceptkit.nodes.comfy_bridge_nodes import ConceptKitModelFromComfy
    from conceptkit.nodes.model_nodes import ConceptKitLoadModel

    checkpoint = load_model(models_dir / "checkpoints" / "tiny_sd1.safetensors", device="cpu",
                            tokenizer_dir=models_dir / "clip_tokenizer")
    assert checkpoint.unet.dtype == torch.float32 and checkpoint.text_encoders[0].dtype == torch.float32
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_dtype("auto", gpu, "sd1") == resolve_dtype("auto", gpu, "sdxl") == torch.float16
    assert resolve_dtype("auto", gpu, "world") == torch.float32
    assert all(resolve_dtype("auto", cpu, family) == torch.float32 for family in ("sd1", "sd2", "sdxl", "world"))
    for node in (ConceptKitLoadModel, ConceptKitModelFromComfy):
        assert node.INPUT_TYPES()["required"]["dtype"][1]["default"] == "auto"


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_checkpoints_are_refused_with_the_reason(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UnsafeFileError) as err:
        load_model(path)
    message = str(err.value)
    assert path.name in message and "pickle" in message and ".safetensors" in message


def test_truncated_safetensors_gives_one_line_error_naming_the_file(tmp_path, models_dir):
    whole = (models_dir / "checkpoints" / "tiny_sd1.safetensors").read_bytes()
    broken = tmp_path / "broken_model.safetensors"
    broken.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelLoadError) as err:
        load_model(broken, tokenizer_dir=models_dir / "clip_tokenizer")
    message = str(err.value)
    assert "broken_model.safetensors" in message and "truncated" in message
    assert "\n" not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_garbage_file_is_not_a_traceback(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(b"hello, this is not a model")
    with pytest.raises(ModelLoadError, match="noise.safetensors"):
        load_model(path)


def test_lora_file_is_named_as_such(tmp_path):
    path = tmp_path / "style_lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, str(path))
    with pytest.raises(ModelLoadError, match="LoRA"):
        load_model(path)


def test_single_file_without_tokenizer_says_where_to_find_one(models_dir):
    with pytest.raises(ModelLoadError, match="sd1_tokenizer"):
        load_model(models_dir / "checkpoints" / "tiny_sd1.safetensors")


def test_missing_path_and_plain_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "nothing_here.safetensors")
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_model(tmp_path)
