"""Run by test_training under `accelerate launch --multi_gpu --num_processes 2` (CPU processes here): train a
few steps; every process writes the concept it ended with."""

import sys
from pathlib import Path

import torch
from accelerate import PartialState

from conceptkit.core.concepts import save_concept
from conceptkit.core.methods.lipschitz_finetune import finetune
from conceptkit.core.model import load_model
from conceptkit.core.training import TrainConfig

model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
state = PartialState(cpu=True)  # as the training loop asks for on a CPU model
model = load_model(model_dir, device="cpu")
images = torch.rand(3, 32, 32, 3, generator=torch.Generator().manual_seed(0))
result = finetune(model, images, TrainConfig(trigger="<t5>", class_word="cat", steps=3, batch_size=2, rank=2))
save_concept(result.concept, out / f"rank{state.process_index}.safetensors")
print(f"process {state.process_index} of {state.num_processes} done")
