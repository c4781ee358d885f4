"""ComfyUI's MODEL/CLIP/VAE become a CK_MODEL: exact conversion, cached per model and patch set.

ComfyUI is not installable here: its objects are stood in for by the few attributes the adapter reads
(the same ones ComfyUI's CheckpointSave uses). The real thing is checked by hand (see the README)."""

from __future__ import annotations

import gc
import sys
import types
import uuid
import weakref

import pytest
import torch

from conceptkit.core.errors import InputError
from conceptkit.core.model import load_ldm_state_dict
from conceptkit.nodes import NODE_CLASS_MAPPINGS
from conceptkit.nodes.comfy_bridge_nodes import CONVERSIONS

from helpers import ldm_layout
from helpers.parity import assert_same_model

ModelFromComfy = NODE_CLASS_MAPPINGS["ConceptKitModelFromComfy"]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_ldm_state_dicts_convert_to_the_diffusers_originals(family, tiny_parts, models_dir):
    state_dict = ldm_layout.to_ldm_checkpoint(family, tiny_parts[family])
    model = load_ldm_state_dict(state_dict, source="test", tokenizer_dir=models_dir / "clip_tokenizer", device="cpu")
    assert model.family == family
    assert_same_model(model, tiny_parts[family])  # UNet, VAE and every text encoder to 1e-5


def test_comfyuis_v_prediction_marker_is_honoured(tiny_parts, models_dir):
    state_dict = {**ldm_layout.to_ldm_checkpoint("sd1", tiny_parts["sd1"]), "v_pred": torch.tensor([])}
    model = load_ldm_state_dict(state_dict, source="test", tokenizer_dir=models_dir / "clip_tokenizer", device="cpu")
    assert model.prediction_type == "v_prediction"


class FakeComfy:
    """ComfyUI's ModelPatcher / CLIP / VAE, reduced to what CheckpointSave (and our adapter) touch."""

    def __init__(self, state_dict, model_type="EPS"):
        self.loads = []
        self.management = types.ModuleType("comfy.model_management")
        self.management.load_models_gpu = lambda models, force_patch_weights=False: self.loads.append(
            (len(models), force_patch_weights))
        base = torch.nn.Module()
        base.model_type = types.SimpleNamespace(name=model_type)
        base.state_dict_for_saving = lambda clip_sd, vae_sd, vision_sd: dict(state_dict)
        self.model = types.SimpleNamespace(model=base, patches_uuid=uuid.uuid4())
        clip_patcher = types.SimpleNamespace(patches_uuid=uuid.uuid4())
        self.clip = types.SimpleNamespace(cond_stage_model=torch.nn.Module(), patcher=clip_patcher,
                                          load_model=lambda: clip_patcher, get_sd=lambda: {})
        self.vae = types.SimpleNamespace(first_stage_model=torch.nn.Module(), get_sd=lambda: {})


@pytest.fixture
def fake_comfy(monkeypatch, tiny_parts, models_dir):
    fake = FakeComfy(ldm_layout.to_ldm_checkpoint("sd1", tiny_parts["sd1"]))
    package = types.ModuleType("comfy")
    package.model_management = fake.management
    monkeypatch.setitem(sys.modules, "comfy", package)
    monkeypatch.setitem(sys.modules, "comfy.model_management", fake.management)
    monkeypatch.setenv("CONCEPTKIT_CLIP_TOKENIZER", str(models_dir / "clip_tokenizer"))
    CONVERSIONS.clear()
    yield fake
    CONVERSIONS.clear()


def test_model_from_comfy_converts_once_per_model_and_patch_set(fake_comfy, tiny_parts):
    node = ModelFromComfy()
    (first,) = node.convert(fake_comfy.model, fake_comfy.clip, fake_comfy.vae, "cpu", "fp32")
    assert_same_model(first, tiny_parts["sd1"])
    assert fake_comfy.loads == [(2, True)]  # LoRA patches are baked in before the weights are read
    (again,) = node.convert(fake_comfy.model, fake_comfy.clip, fake_comfy.vae, "cpu", "fp32")
    assert again is first and len(fake_comfy.loads) == 1

    released = weakref.ref(first)
    del first, again
    fake_comfy.model.patches_uuid = uuid.uuid4()  # what Load LoRA does to the patcher it returns
    (patched,) = node.convert(fake_comfy.model, fake_comfy.clip, fake_comfy.vae, "cpu", "fp32")
    gc.collect()
    assert released() is None and len(fake_comfy.loads) == 2
    assert patched.prediction_type == "epsilon"


def test_v_prediction_comfy_models_keep_their_prediction_type(fake_comfy):
    fake_comfy.model.model.model_type.name = "V_PREDICTION"
    (model,) = ModelFromComfy().convert(fake_comfy.model, fake_comfy.clip, fake_comfy.vae, "cpu", "fp32")
    assert model.prediction_type == "v_prediction"


def test_unsupported_comfy_models_and_missing_comfyui_are_explained(fake_comfy, monkeypatch):
    fake_comfy.model.model.model_type.name = "FLOW"
    with pytest.raises(InputError, match="predicts 'FLOW'"):
        ModelFromComfy().convert(fake_comfy.model, fake_comfy.clip, fake_comfy.vae, "cpu", "fp32")
    monkeypatch.delitem(sys.modules, "comfy.model_management")
    monkeypatch.setitem(sys.modules, "comfy.model_management", None)  # as when ComfyUI is absent
    with pytest.raises(InputError, match="use ConceptKit Load Model"):
        ModelFromComfy().convert(fake_comfy.model, fake_comfy.clip, fake_comfy.vae, "cpu", "fp32")
