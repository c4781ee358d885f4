"""Run by test_concept_encoder under `accelerate launch --multi_gpu --num_processes 2` (CPU processes here):
pre-train a Concept Encoder a few steps on a folder of images; every process writes the encoder it ended with."""

import sys
from pathlib import Path

from accelerate import PartialState

from conceptkit.core.methods.concept_encoder import (
    Pretrained,
    PretrainSettings,
    backbone_for,
    pretrain_encoder,
    save_encoder,
)
from conceptkit.core.methods.concept_encoder.domain import folder_domain
from conceptkit.core.methods.concept_encoder.training import PRETRAIN_TRIGGER
from conceptkit.core.model import load_model
from conceptkit.core.model.image_features import load_clip_vision

model_dir, clip_dir, images, out = (Path(a) for a in sys.argv[1:5])
state = PartialState(cpu=True)  # as the training loop asks for on a CPU model
model = load_model(model_dir, device="cpu")
backbone = backbone_for(model, load_clip_vision(clip_dir))
start = Pretrained.fresh(model, backbone, "cat", hidden=32)
data = folder_domain(images, model.default_size, PRETRAIN_TRIGGER)
trained, _ = pretrain_encoder(model, backbone, start, PretrainSettings(steps=3, batch_size=2), data)
save_encoder(trained, out / f"rank{state.process_index}.safetensors")
print(f"process {state.process_index} of {state.num_processes} done")
