"""The embedded world model as shipped: diffusers loads it offline, and it draws what its prompts say."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch

from conceptkit import cli
from conceptkit.core.model import load_model
from conceptkit.core.model.loading import EMBEDDED_DIR
from conceptkit.core.sampling import CFG, sample

PROMPT = "a large red star in the centre, blue background"

PIPELINE_SCRIPT = """
import sys, numpy as np, torch
from diffusers import StableDiffusionPipeline
torch.set_num_threads(1)
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1])
out = pipe(sys.argv[2], num_inference_steps=8, guidance_scale=5.0, height=64, width=64, output_type="np",
           generator=torch.Generator().manual_seed(3))
np.save(sys.argv[3], out.images)
"""


def test_diffusers_loads_the_shipped_model_offline_and_our_sampler_matches_it(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "no_cache")}
    done = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(EMBEDDED_DIR), PROMPT, str(tmp_path / "p.npy")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = np.load(tmp_path / "p.npy")
    ours = sample(load_model(), PROMPT, seed=3, steps=8, guidance=CFG(5.0)).images.numpy()
    assert theirs.shape == ours.shape == (1, 64, 64, 3)
    assert np.abs(theirs - ours).max() < 1e-4


def test_bench_base_scores_the_shipped_model_above_the_gate(tmp_path, capsys):
    assert cli.main(["bench", "base", "--quick", "--json", str(tmp_path / "base.json"),
                     "--report", str(tmp_path / "report"), "-q"]) == 0
    result = json.loads((tmp_path / "base.json").read_text())
    assert result["suite"] == "base"
    rows = result["rows"]
    pair_rows = {"both_creatures", "creature", "shape_colour", "shape_shape", "shape_size", "shape_position",
                 "background"}
    assert {(r["attribute"], r["split"]) for r in rows} == {
        (a, s) for a in ("background", "colour", "shape", "size", "position") for s in ("seen", "heldout")} | {
        (a, "pairs") for a in pair_rows}
    gates = {"seen": 0.90, "heldout": 0.80, "both_creatures": 0.90, "background": 0.95}
    for row in rows:
        split = row["split"] if row["split"] != "pairs" else row["attribute"]
        assert row["accuracy"] >= gates.get(split, 0.85), row
    report = (tmp_path / "report" / "report.md").read_text()
    assert "![seen](seen.png)" in report and (tmp_path / "report" / "pairs.png").is_file()
    assert "| colour" in capsys.readouterr().out


def test_the_colour_word_sets_the_objects_colour():
    model = load_model()
    red = sample(model, "a large red star in the centre, blue background", seed=0, steps=10, guidance=CFG(5.0))
    green = sample(model, "a large green star in the centre, blue background", seed=0, steps=10, guidance=CFG(5.0))
    centre = lambda r: r.images[0, 24:40, 24:40].mean(dim=(0, 1))  # noqa: E731
    assert centre(red)[0] > centre(red)[1] + 0.3 and centre(green)[1] > centre(green)[0] + 0.3
    assert torch.isfinite(red.latents).all()


def test_a_concept_made_on_the_first_edition_warns_on_the_shipped_model(caplog):
    from pathlib import Path

    from conceptkit.core.concepts import apply_concept, load_concept

    old = load_concept(Path(__file__).parent / "data" / "first_edition_concept.safetensors")  # made on edition 1
    model = load_model()
    assert old.base_fingerprint != model.fingerprint()
    with caplog.at_level("WARNING", logger="conceptkit"):
        apply_concept(model, old)
    assert "trained on another world model" in caplog.text and old.base_fingerprint in caplog.text
    assert json.loads((EMBEDDED_DIR / "conceptkit.json").read_text())["stages"][-1]["mix"] == "third_edition"
