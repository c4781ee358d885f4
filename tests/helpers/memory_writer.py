"""Run by test_concept_memory in a subprocess: `learn` a concept into a memory (killed mid-way by the test), learn
and hang before the commit (killed there), or hold a memory's lock for a while (the second-writer
test). Prints 'training' / 'trained' / 'holding' when it gets there."""

import sys
import time
from pathlib import Path

import torch

from conceptkit.core.methods.concept_memory import LearnSettings, MemoryStore, learn
from conceptkit.core.model import EMBEDDED, load_model
from conceptkit.core.world.subjects import training_renders

action, root, name = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
model = load_model(EMBEDDED)
store = MemoryStore.open_or_create(root, name, model)
if action == "learn-then-hang":  # trains, then hangs where the commit would start: the test kills it there
    def hang(*args, **kwargs):
        print("trained", flush=True)
        time.sleep(600)

    MemoryStore.commit = hang
    images, captions = training_renders(int(sys.argv[4]), 4)
    learn(store, model, torch.from_numpy(images).float() / 255, sys.argv[5], "creature",
          LearnSettings(steps=int(sys.argv[6]), candidates=2, keep=1), captions=captions,
          checkpoint_dir=Path(sys.argv[7]))
elif action == "hold":
    with store.writer():
        print("holding", flush=True)
        time.sleep(float(sys.argv[4]))
else:
    images, captions = training_renders(int(sys.argv[4]), 4)

    def progress(step, total, preview):
        print("training", step, flush=True)

    learn(store, model, torch.from_numpy(images).float() / 255, sys.argv[5], "creature",
          LearnSettings(steps=int(sys.argv[6]), candidates=2, keep=1), captions=captions, progress=progress)
    print("learned", flush=True)
