"""Bad input through `conceptkit run` and the nodes, by class: workflow files, values and overrides, outputs and
files, models, images, concepts and encoders, interruption. Each: a clear message naming the problem (exit status
2 through the runner, no traceback) and no file written or left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conceptkit import cli

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
TEXT_TO_IMAGE = json.loads((WORKFLOWS / "text_to_image.json").read_text())


def api(**nodes):
    return {str(k): v for k, v in nodes.items()}


def ui(nodes, links=()):
    return {"version": 0.4, "nodes": nodes, "links": list(links)}


SAVE = {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}
WORKFLOW_FILES = {  # name -> (file bytes, words the message must contain)
    "empty": (b"", "is empty"),
    "whitespace": (b"  \n\t ", "is empty"),
    "malformed": (b'{"nodes": [', "not valid JSON"),
    "not utf-8": ('{"1": "caf\u00e9"}'.encode("latin-1"), "not UTF-8"),
    "deeply nested": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "a list": (b"[1, 2, 3]", "not a ComfyUI workflow"),
    "a number": (b"42", "not a ComfyUI workflow"),
    "nodes are not objects": (json.dumps(ui([1, "two"])).encode(), "entry 0 of 'nodes'"),
    "node without id": (json.dumps(ui([{"type": "ConceptKitSample"}])).encode(), "has no id"),
    "node without type": (json.dumps(ui([{"id": 1}])).encode(), "has no type"),
    "duplicate node ids": (json.dumps(ui([{"id": 1, "type": "SaveImage"}, {"id": 1, "type": "SaveImage"}])).encode(),
                           "two nodes have the id 1"),
    "short link": (json.dumps(ui([{"id": 1, "type": "SaveImage"}], [[1, 2, 0]])).encode(), "link entry 0"),
    "non-integer slot": (json.dumps(ui([{"id": 1, "type": "SaveImage"}], [[1, 2, "a", 1, 0, "IMAGE"]])).encode(),
                         "not a slot number"),
    "links not a list": (json.dumps({"nodes": [], "links": {"a": 1}}).encode(), "'links' is not a list"),
    "inputs not a list": (json.dumps(ui([{"id": 1, "type": "SaveImage", "inputs": {"a": 1}}])).encode(),
                          "inputs are not a list"),
    "api inputs a list": (json.dumps(api(**{"1": {"class_type": "SaveImage", "inputs": [1, 2]}})).encode(),
                          "inputs are not an object"),
    "api class_type not text": (json.dumps(api(**{"1": {"class_type": 5, "inputs": {}}})).encode(),
                                "class_type is not"),
    "unknown node type": (json.dumps(api(**{"1": {"class_type": "NoSuchNode", "inputs": {}}, "2": SAVE})).encode(),
                          "unknown node type 'NoSuchNode'"),
    "bom and unknown node type": (b"\xef\xbb\xbf" + json.dumps(api(**{"1": {"class_type": "NoSuchNode"},
                                                                     "2": SAVE})).encode(), "NoSuchNode"),
}


def run(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err
    return code, err


def written(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize("case", sorted(WORKFLOW_FILES))
def test_a_bad_workflow_file_gets_one_clear_answer(case, tmp_path, capsys):
    content, words = WORKFLOW_FILES[case]
    path = tmp_path / "wf.json"
    path.write_bytes(content)
    code, err = run(["run", str(path), "--out", str(tmp_path / "out"), "-q"], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.startswith("conceptkit: error:") and words in err, err
    assert written(tmp_path / "out") == []


def text_to_image(tmp_path: Path) -> Path:
    path = tmp_path / "t2i.json"
    path.write_text(json.dumps(TEXT_TO_IMAGE))
    return path


@pytest.mark.parametrize("override,words", [
    ("2.no_such_input=1", "has no input 'no_such_input'"),
    ("2.cfg=NaN", "not a finite number"),
    ("2.cfg=Infinity", "not a finite number"),
    ("2.cfg=-Infinity", "not a finite number"),
    ("2.steps=2.5", "not a whole number"),
    ("2.steps=0", "smaller than the minimum"),
    ("2.sampler=nope", "not one of the choices"),
    ("9.seed=1", "has no node 9"),
    ("2seed=1", "expected NODE_ID.INPUT=VALUE"),
    ("1.model=checkpoints/../../secret.safetensors", "not one of the choices"),
    ("1.device=tpu", "not one of the choices"),
    ("2.width=8192", "far beyond this model's size"),
    ("2.batch_size=100000", "bigger than the maximum"),
    ("2.seed", "expected NODE_ID.INPUT=VALUE"),
])
def test_a_bad_override_is_refused_before_the_model_loads(override, words, tmp_path, capsys):
    code, err = run(["run", str(text_to_image(tmp_path)), "--out", str(tmp_path / "out"), "-q", "--set", override],
                    capsys)
    assert code == 2 and "Traceback" not in err and words in err, err
    assert written(tmp_path / "out") == []


def test_the_workflow_path_a_folder_or_missing_and_out_a_file(tmp_path, capsys):
    code, err = run(["run", str(tmp_path), "-q"], capsys)
    assert code == 2 and "is a folder" in err
    code, err = run(["run", str(tmp_path / "nope.json"), "-q"], capsys)
    assert code == 2 and "no such workflow file" in err
    (tmp_path / "taken").write_text("x")
    code, err = run(["run", str(text_to_image(tmp_path)), "--out", str(tmp_path / "taken"), "-q"], capsys)
    assert code == 2 and "is a file" in err and (tmp_path / "taken").read_text() == "x"


# --- files, models and values through the library and the nodes ----------------------------------------------

def _write_same_name(folder, barrier, results, index):
    from conceptkit.core.errors import InputError
    from conceptkit.core.files import atomic_write

    barrier.wait()
    try:
        atomic_write(Path(folder) / "pet.safetensors", lambda f: f.write(f"writer {index}".encode()), "error")
        results[index] = "ok"
    except InputError as e:
        results[index] = "refused" if "already exists" in str(e) else str(e)


def test_two_writers_of_one_name_exactly_one_succeeds_in_50_of_50_trials(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for trial in range(50):
        folder = tmp_path / str(trial)
        folder.mkdir()
        barrier, results = context.Barrier(2), context.Manager().dict()
        writers = [context.Process(target=_write_same_name, args=(folder, barrier, results, i)) for i in range(2)]
        for w in writers:
            w.start()
        for w in writers:
            w.join(30)
        assert sorted(results.values()) == ["ok", "refused"], (trial, dict(results))
        assert [p.name for p in folder.iterdir()] == ["pet.safetensors"]  # nothing else left behind


def test_files_get_the_permissions_of_the_umask(tmp_path):
    import os

    from conceptkit.core.files import atomic_write

    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_names_that_cannot_be_written_are_refused():
    from conceptkit.core.errors import InputError
    from conceptkit.core.files import safe_file_name

    for name, words in [("a" * 300, "characters long"), ("../x", "folder separator"), ("", "empty"),
                        (".hidden", "leading dot"), ("a*b", "not safe")]:
        with pytest.raises(InputError, match=words):
            safe_file_name(name)


@pytest.mark.parametrize("damage,words", [
    ("unet/config.json", "unet/config.json is damaged"),
    ("text_encoder/config.json", "text_encoder/config.json"),
    ("model_index.json", "model_index.json is damaged"),
    ("scheduler/scheduler_config.json", "scheduler/scheduler_config.json is damaged"),
])
def test_a_model_folder_with_damaged_json_says_which_file(damage, words, tmp_path):
    import shutil

    from conceptkit.core.errors import ModelLoadError
    from conceptkit.core.model import load_model
    from conceptkit.core.model.loading import EMBEDDED_DIR

    folder = tmp_path / "model"
    shutil.copytree(EMBEDDED_DIR, folder)
    (folder / damage).write_text('{"_class_name": ')
    with pytest.raises(ModelLoadError, match=words):
        load_model(str(folder), device="cpu")
    (folder / damage).unlink()
    with pytest.raises(ModelLoadError, match="missing|not a diffusers model folder"):
        load_model(str(folder), device="cpu")


def test_a_16_bit_png_keeps_its_values_and_a_decompression_bomb_is_refused(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from conceptkit.core.errors import InputError
    from conceptkit.runner.io_nodes import load_image_file

    grey = np.full((8, 8), 16384, np.uint16)  # a quarter of the 16-bit range
    Image.fromarray(grey).save(tmp_path / "deep.png")
    image, _ = load_image_file(tmp_path / "deep.png")
    assert abs(float(image.mean()) - 0.25) < 0.01
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InputError, match="too large"):
        load_image_file(tmp_path / "big.png")


@pytest.fixture(scope="module")
def world():
    from conceptkit.core.model import load_model

    return load_model(device="cpu")


def test_a_size_far_beyond_the_model_is_refused_before_sampling(world):
    from conceptkit.core.errors import InputError
    from conceptkit.core.sampling import sample

    with pytest.raises(InputError, match="far beyond"):
        sample(world, "a red star", width=8192, height=64, steps=1)


@pytest.mark.parametrize("trigger", ["red,", "my dog", "<a.b>", "!!", ""])
def test_a_trigger_that_would_take_over_prompts_is_refused(world, trigger):
    from conceptkit.core.errors import InputError
    from conceptkit.core.training import TrainConfig, train_concept

    images = torch.zeros(2, 64, 64, 3)
    with pytest.raises(InputError, match="trigger"):
        train_concept(world, images, TrainConfig(trigger=trigger, class_word="creature", steps=1))


def test_a_lora_of_the_wrong_shape_is_refused_when_applied(world):
    from conceptkit.core.concepts import apply_concept
    from conceptkit.core.errors import InputError
    from conceptkit.core.sampling import sample

    from helpers.concepts import lora_concept

    concept = lora_concept(world)
    name = next(k for k in concept.tensors if k.endswith(".down"))
    concept.tensors[name] = torch.zeros(concept.tensors[name].shape[0], 7)
    with pytest.raises(InputError, match="do not fit the model's layer"):
        sample(apply_concept(world, concept), "a <c> creature", steps=1)


def test_a_full_disk_during_a_training_checkpoint_leaves_nothing_half_written(world, tmp_path, monkeypatch):
    import errno

    from conceptkit.core.errors import ConceptKitError
    from conceptkit.core.training import TrainConfig, checkpoints, train_concept

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints, "save_file", full_disk)
    images = torch.rand(2, 64, 64, 3)
    with pytest.raises(ConceptKitError, match="free some disk space"):
        train_concept(world, images, TrainConfig(trigger="<c>", class_word="creature", steps=2, rank=1,
                                                 checkpoint_every=1), checkpoint_dir=tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir()] == []


def test_a_concept_with_nan_weights_is_refused_not_drawn_black(world):
    from conceptkit.core.concepts import apply_concept
    from conceptkit.core.errors import InputError

    from helpers.concepts import lora_concept

    concept = lora_concept(world)
    name = next(k for k in concept.tensors if k.endswith(".up"))
    concept.tensors[name] = torch.full_like(concept.tensors[name], float("nan"))
    with pytest.raises(InputError, match="not numbers"):
        apply_concept(world, concept)


@pytest.mark.parametrize("choice", ["/etc", "../models", "checkpoints/../../secret.safetensors",
                                    "diffusers/../../x", "checkpoints//etc/passwd"])
def test_load_model_called_directly_reads_nothing_outside_the_models_folders(choice, tmp_path, monkeypatch):
    from conceptkit import NODE_CLASS_MAPPINGS
    from conceptkit.core.errors import InputError

    monkeypatch.setenv("CONCEPTKIT_MODELS_DIR", str(tmp_path))
    with pytest.raises(InputError, match="not one of the choices|outside the"):
        NODE_CLASS_MAPPINGS["ConceptKitLoadModel"]().load(choice, "cpu", "fp32", "auto")


def test_a_temporary_file_left_by_a_killed_write_is_swept_by_the_next_write(tmp_path):
    import os
    import time

    from conceptkit.core.files import atomic_write

    stale, fresh = tmp_path / ".pet.safetensors.abc.tmp", tmp_path / ".pet.safetensors.def.tmp"
    for leftover in (stale, fresh):
        leftover.write_bytes(b"half")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    atomic_write(tmp_path / "pet.safetensors", lambda f: f.write(b"whole"))
    assert not stale.exists() and fresh.exists()  # a recent one may belong to a write still running


def test_saved_images_skip_a_name_another_process_took(tmp_path, monkeypatch):
    import importlib

    from conceptkit.core import files

    io_nodes = importlib.import_module("conceptkit.runner.io_nodes")  # the module, not its io_nodes() function
    real = files.atomic_write
    taken_meanwhile = tmp_path / "output" / "x_00001_.png"

    def racing(path, write, if_exists="error"):
        if path == taken_meanwhile and not path.exists():
            path.write_bytes(b"the other process's image")
        return real(path, write, if_exists)

    monkeypatch.setattr(io_nodes, "atomic_write", racing)
    saved = io_nodes.save_png_batch(torch.zeros(2, 8, 8, 3), tmp_path, "output", "x", None)
    assert [s["filename"] for s in saved] == ["x_00002_.png", "x_00003_.png"]
    assert taken_meanwhile.read_bytes() == b"the other process's image"


# --- the Concept Encoder's workflow through `conceptkit run` ------------------------------------------------------

CONCEPT_ENCODER = WORKFLOWS / "concept_encoder.json"


@pytest.fixture(scope="module")
def encoder_models(tmp_path_factory):
    """A models folder whose conceptkit/encoders holds: an encoder made for sd1, a damaged file, a concept file."""
    import json as json_module

    from safetensors import safe_open
    from safetensors.torch import save_file

    from conceptkit.core.methods.concept_encoder import EMBEDDED_ENCODER

    root = tmp_path_factory.mktemp("models")
    folder = root / "conceptkit" / "encoders"
    folder.mkdir(parents=True)
    with safe_open(str(EMBEDDED_ENCODER), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        info = json_module.loads(f.metadata()["conceptkit_encoder"])
    save_file(tensors, str(folder / "sd1_cats.safetensors"),
              {"conceptkit_encoder": json_module.dumps({**info, "family": "sd1"})})
    (folder / "damaged.safetensors").write_bytes(EMBEDDED_ENCODER.read_bytes()[:5000])
    save_file({"x": torch.zeros(1)}, str(folder / "a_concept.safetensors"), {"conceptkit": "{}"})
    return root


@pytest.mark.parametrize("override,words", [
    ("2.count=2", "takes ONE image; this batch has 2"),
    ("4.tuning_steps=-1", "smaller than the minimum"),
    ("4.seed=-1", "smaller than the minimum"),
    ("4.trigger=red,", "the trigger 'red,' contains ','"),
    ("4.trigger=creature", "already a word of this model's vocabulary"),
    ("3.encoder=nope.safetensors", "not one of the choices"),
    ("3.encoder=sd1_cats.safetensors", "Concept Encoder for sd1 models; the model is world"),
    ("3.encoder=damaged.safetensors", "damaged.safetensors: not a readable .safetensors file"),
    ("3.encoder=a_concept.safetensors", "not a ConceptKit Concept Encoder file"),
])
def test_the_concept_encoder_workflow_refuses_bad_input_with_one_line(override, words, encoder_models, tmp_path,
                                                                       capsys):
    refused_with_one_line(CONCEPT_ENCODER, override, words, encoder_models, tmp_path, capsys)


def refused_with_one_line(workflow: Path, override: str | tuple[str, ...], words: str, models: Path, tmp_path: Path,
                          capsys) -> None:
    """`conceptkit run WORKFLOW --set OVERRIDE` (one or several) exits 2 with one "conceptkit: error:" line saying
    `words`, no traceback, and nothing in the output folder."""
    sets = [option for value in ((override,) if isinstance(override, str) else override) for option in ("--set", value)]
    code, err = run(["run", str(workflow), "--out", str(tmp_path / "out"), "--models", str(models), "-q", *sets],
                    capsys)
    assert code == 2 and "Traceback" not in err and err.startswith("conceptkit: error:"), err
    assert err.count("error:") == 1, err
    assert words in err, err
    assert written(tmp_path / "out") == []


# --- the SGE Inverter's workflow through `conceptkit run` ---------------------------------------------------------

SGE_INVERTER = WORKFLOWS / "sge_inverter.json"


@pytest.mark.parametrize("override,words", [
    ("2.count=11", "takes 1 to 10 images of the new domain; 11 were given. Pick the 10 most typical."),
    ("3.window_end=30", "the guidance window [0, 30) does not fit 25 steps"),
    ("3.window=sideways", "not one of the choices"),
    ("3.epochs=0", "smaller than the minimum"),
    ("4.count=0", "smaller than the minimum"),
])
def test_the_sge_inverter_workflow_refuses_bad_input_with_one_line(override, words, tmp_path, capsys):
    refused_with_one_line(SGE_INVERTER, override, words, tmp_path / "models", tmp_path, capsys)


# --- the Concept Memory's workflow through `conceptkit run` -------------------------------------------------------

CONCEPT_MEMORY = WORKFLOWS / "concept_memory.json"


@pytest.mark.parametrize("override,words", [
    ("2.name=../elsewhere", "memory name"),
    (("6.trigger=<pet-a>", "6.if_learned=error"), "already holds '<pet-a>'"),
    ("4.trigger=creature", "already a word of this model's vocabulary"),
    ("4.steps=0", "smaller than the minimum"),
])
def test_the_concept_memory_workflow_refuses_bad_input_with_one_line(override, words, tmp_path, capsys):
    refused_with_one_line(CONCEPT_MEMORY, override, words, tmp_path / "models", tmp_path, capsys)


def test_ctrl_c_during_training_says_how_to_resume_and_the_rerun_resumes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    workflow = WORKFLOWS / "lipschitz_finetune.json"
    command = [sys.executable, "-m", "conceptkit", "run", str(workflow), "--out", str(tmp_path / "out"),
               "--models", str(tmp_path / "models"), "--set", "3.steps=400", "--set", "3.checkpoint_every=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a background job of a shell ignores SIGINT, and children inherit that: the default, as in a terminal
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in process.stderr:  # progress lines come every tenth of the run
        lines.append(line)
        if "Lipschitz Finetune: step" in line and not line.rstrip().endswith("step 0/400"):
            break
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 130, "".join(lines) + rest
    assert "Traceback" not in rest and "run the same command again to resume" in rest, rest
    stored = list((tmp_path / "models" / "conceptkit" / "checkpoints").glob("*/step_*"))
    assert len(stored) == 1
    step = int(stored[0].name.removeprefix("step_"))
    again = subprocess.run([*command, "--set", "3.steps=" + str(step + 1)], capture_output=True, text=True, env=env,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed at step {step} of {step + 1}" in again.stderr


# --- images the training nodes refuse, before anything trains ------------------------------------------------------

BAD_IMAGES = {  # name -> (ComfyUI IMAGE, words)
    "empty batch": (torch.zeros(0, 64, 64, 3), "no images were given"),
    "NaN pixels": (torch.full((1, 64, 64, 3), float("nan")), "NaN or infinite"),
    "tiny": (torch.zeros(1, 8, 8, 3), "at least 16x16"),
    "no channel axis": (torch.zeros(64, 64), "shape"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_lipschitz_finetune_refuses_bad_images_with_the_fix(case, world, tmp_path, monkeypatch):
    from conceptkit import NODE_CLASS_MAPPINGS as N
    from conceptkit.core.errors import InputError

    monkeypatch.setenv("CONCEPTKIT_MODELS_DIR", str(tmp_path))
    image, words = BAD_IMAGES[case]
    with pytest.raises(InputError, match=words):
        N["ConceptKitLipschitzFinetune"]().train(world, image, "<pet>", "creature", "", "lora", 2, 0.0, "frobenius",
                                                 steps=1, learning_rate=1e-3, batch_size=1, seed=0)
    assert not list((tmp_path / "conceptkit" / "checkpoints").rglob("*.safetensors"))  # nothing trained or kept


@pytest.mark.parametrize("image,words", [
    (torch.zeros(0, 64, 64, 3), "ONE image; this batch has 0"),
    (torch.full((1, 64, 64, 3), float("nan")), "NaN or infinite"),
    (torch.zeros(1, 8, 8, 3), "at least 16x16"),
    (torch.zeros(1, 64, 64, 4), "RGBA"),
    (torch.zeros(1, 64, 64, 1), "grayscale"),
])
def test_the_concept_encoder_node_refuses_bad_images_with_the_fix(image, words, world):
    from conceptkit import NODE_CLASS_MAPPINGS as N
    from conceptkit.core.errors import InputError

    (encoder,) = N["ConceptKitLoadConceptEncoder"]().load("world creatures (embedded)")
    with pytest.raises(InputError, match=words):
        N["ConceptKitConceptEncoder"]().encode(world, encoder, image, "<pet>", tuning_steps=1, seed=0)


def test_an_encoder_concept_exported_as_a_kohya_lora_is_refused_with_the_formats_that_fit(world, tmp_path):
    from conceptkit.core.concepts.export import export_concept
    from conceptkit.core.errors import InputError
    from conceptkit.core.methods.concept_encoder import (
        EMBEDDED_ENCODER,
        TuneSettings,
        load_encoder,
        tune_concept,
    )
    from conceptkit.core.model.image_features import world_backbone

    concept = tune_concept(world, load_encoder(EMBEDDED_ENCODER, world), world_backbone(world),
                           torch.zeros(1, 3, 64, 64), "<pet>", TuneSettings(steps=0))
    with pytest.raises(InputError, match="export it as an embedding or in diffusers format"):
        export_concept(concept, world, "kohya_lora", tmp_path, "pet")
    assert list(tmp_path.iterdir()) == []


def test_a_pickled_encoder_file_is_never_opened(world, tmp_path):
    from conceptkit.core.errors import UnsafeFileError
    from conceptkit.core.methods.concept_encoder import load_encoder

    path = tmp_path / "encoder.pt"
    path.write_bytes(b"\x80\x04not really")
    with pytest.raises(UnsafeFileError, match="pickles"):
        load_encoder(path, world)


@pytest.mark.parametrize("content,words", [
    (b"this is not a picture", "not a readable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not a readable image"),
    (None, "not one of the choices"),
])
def test_load_image_of_a_broken_or_missing_file_gets_one_line(content, words, tmp_path, capsys):
    inputs = tmp_path / "input"
    inputs.mkdir()
    if content is not None:
        (inputs / "photo.png").write_bytes(content)
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(api(**{"1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
                                          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0],
                                                                                      "filename_prefix": "x"}}})))
    code, err = run(["run", str(workflow), "--out", str(tmp_path / "out"), "--input-dir", str(inputs), "-q"], capsys)
    assert code == 2 and "Traceback" not in err and words in err, err
    assert written(tmp_path / "out") == []


# --- node calls from a script: checked as ComfyUI checks a queued graph, before any work -------------------------

IMAGE = torch.zeros(1, 64, 64, 3)
SOMETHING = object()  # a linked value the check does not look into (a model, a concept, an SGE set)
NODE_CALLS = {  # name -> (node, keyword arguments, words the one-line message must contain)
    "images as a list": ("ConceptKitSGEInverter", dict(model=SOMETHING, images=[IMAGE[0]]), "'images': expects a "
                         "ComfyUI IMAGE"),
    "images None": ("ConceptKitSGEInverter", dict(model=SOMETHING, images=None), "'images': is not connected"),
    "images a numpy array": ("ConceptKitLipschitzFinetune", dict(model=SOMETHING, images=IMAGE.numpy()),
                             "got a ndarray"),
    "image without a batch axis": ("ConceptKitConceptEncoder", dict(model=SOMETHING, encoder=SOMETHING,
                                                                    image=IMAGE[0]), "tensor of shape (64, 64, 3)"),
    "model None": ("ConceptKitSample", dict(model=None, prompt="a creature"), "'model': is not connected"),
    "SGE negative learning rate": ("ConceptKitSGEInverter", dict(model=SOMETHING, images=IMAGE, steps=25,
                                                                window="noise", window_start=0, window_end=0,
                                                                scale=2.0, epochs=1, seed=0, learning_rate=-0.05),
                                   "'learning_rate': -0.05 is smaller than the minimum"),
    "SGE relax NaN": ("ConceptKitSGESample", dict(model=SOMETHING, sge=SOMETHING, count=1, seed=0,
                                                   relax=float("nan")), "'relax': nan is not a finite number"),
    "SGE count 0": ("ConceptKitSGESample", dict(model=SOMETHING, sge=SOMETHING, count=0, seed=0, relax=0.05),
                    "'count': 0 is smaller than the minimum 1"),
    "negative artist share": ("ConceptKitApplyMemory", dict(model=SOMETHING, memory=SOMETHING, strength=1.0,
                                                            artist=True, artist_step_size=20.0, artist_share=-0.5),
                              "'artist_share': -0.5 is smaller than the minimum 0.0"),
    "artist not a boolean": ("ConceptKitApplyMemory", dict(model=SOMETHING, memory=SOMETHING, strength=1.0,
                                                           artist="yes"), "'artist': 'yes' is not true or false"),
    "seed -1": ("ConceptKitLipschitzFinetune", dict(model=SOMETHING, images=IMAGE, seed=-1),
                "'seed': -1 is smaller than the minimum 0"),
    "seed above 64 bits": ("ConceptKitSample", dict(model=SOMETHING, seed=2**64), "'seed': 18446744073709551616 is "
                           "bigger than the maximum"),
    "seed not whole": ("ConceptKitSample", dict(model=SOMETHING, seed=1.5), "'seed': 1.5 is not a whole number"),
    "finetune learning rate NaN": ("ConceptKitLipschitzFinetune", dict(model=SOMETHING, images=IMAGE,
                                                                       learning_rate=float("nan")),
                                   "'learning_rate': nan is not a finite number"),
    "finetune negative learning rate": ("ConceptKitLipschitzFinetune", dict(model=SOMETHING, images=IMAGE,
                                                                            learning_rate=-1e-3),
                                        "'learning_rate': -0.001 is smaller"),
    "memory learn steps 0": ("ConceptKitMemoryLearn", dict(memory=SOMETHING, model=SOMETHING, images=IMAGE, steps=0),
                             "'steps': 0 is smaller than the minimum 1"),
    "encoder tuning steps negative": ("ConceptKitConceptEncoder", dict(model=SOMETHING, encoder=SOMETHING,
                                                                       image=IMAGE, tuning_steps=-4),
                                      "'tuning_steps': -4 is smaller"),
    "strength infinite": ("ConceptKitApplyConcept", dict(model=SOMETHING, concept=SOMETHING,
                                                         strength=float("inf")), "'strength': inf is not a finite"),
    "guidance w negative": ("ConceptKitPersonalizationGuidanceSampler", dict(model=SOMETHING, prompt="a creature",
                                                                             w=-1.0), "'w': -1.0 is smaller"),
    "sampler not offered": ("ConceptKitSample", dict(model=SOMETHING, prompt="a creature", sampler="nope"),
                            "'sampler': 'nope' is not one of the choices"),
    "NUL in a file name": ("ConceptKitSaveConcept", dict(concept=SOMETHING, name="pet\x00.safetensors"),
                           "'name': contains a NUL character"),
    "prompt not text": ("ConceptKitSample", dict(model=SOMETHING, prompt=5), "'prompt': 5 is not text"),
    "an input the node does not declare": ("ConceptKitLipschitzFinetune", dict(model=SOMETHING, images=IMAGE,
                                                                               learning_rat=1e-4),
                                           "'learning_rat' is not an input of this node"),
    "world subject out of range": ("ConceptKitWorldSubject", dict(subject=100), "'subject': 100 is bigger than the "
                                   "maximum 99"),
}


@pytest.mark.parametrize("case", sorted(NODE_CALLS))
def test_a_node_called_from_a_script_refuses_a_bad_value_before_any_work(case, tmp_path, monkeypatch):
    from conceptkit import NODE_CLASS_MAPPINGS as N
    from conceptkit.core.errors import InputError

    monkeypatch.setenv("CONCEPTKIT_MODELS_DIR", str(tmp_path / "models"))
    node, values, words = NODE_CALLS[case]
    node_class = N[node]
    with pytest.raises(InputError) as refused:
        getattr(node_class(), node_class.FUNCTION)(**values)
    message = str(refused.value)
    assert words in message and "\n" not in message, message
    assert not (tmp_path / "models").exists()  # nothing written, no folder made


def test_a_node_called_with_good_values_runs_as_before(world):
    from conceptkit import NODE_CLASS_MAPPINGS as N

    (images,) = N["ConceptKitSample"]().generate(world, "a creature", "", 3, 2, 5.0, "ddim", 0, 0, 1)
    assert images.shape == (1, 64, 64, 3) and torch.isfinite(images).all()


# --- images a script hands over: read by their own range -----------------------------------------------------------

@pytest.mark.parametrize("dtype,grey", [("uint8", 128), ("uint16", 32768), ("int32", 2**30), ("float32", 0.5)])
def test_an_image_array_of_any_number_type_is_read_by_its_own_range(dtype, grey):
    import numpy as np

    from conceptkit.core.training import prepare_images

    image = np.full((64, 64, 3), grey, dtype=dtype)
    prepared = prepare_images([image], 64)
    assert abs(float(prepared.mean())) < 0.01  # mid grey, not white (16-bit was read as white)


def test_an_image_array_of_text_is_refused_with_what_to_give():
    import numpy as np

    from conceptkit.core.errors import InputError
    from conceptkit.core.training import prepare_images

    with pytest.raises(InputError, match="numpy array of <U1; give numbers"):
        prepare_images([np.full((64, 64, 3), "a")], 64)


# --- kept results and working folders ------------------------------------------------------------------------------

def _finetune(world, images):
    from conceptkit import NODE_CLASS_MAPPINGS as N

    return N["ConceptKitLipschitzFinetune"]().train(world, images, "<pet>", "creature", "", "lora", 2, 0.0,
                                                    "frobenius", steps=2, learning_rate=1e-3, batch_size=1, seed=0)


def test_a_truncated_kept_result_is_named_removed_and_trained_again(world, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CONCEPTKIT_MODELS_DIR", str(tmp_path))
    images = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    first, _ = _finetune(world, images)
    (kept,) = list((tmp_path / "conceptkit" / "checkpoints").rglob("result.safetensors"))
    kept.write_bytes(kept.read_bytes()[:1000])  # cut short by a full disk, say
    with caplog.at_level("WARNING"):
        again, _ = _finetune(world, images)
    assert f"the kept result {kept} cannot be read" in caplog.text and "trains again" in caplog.text
    assert all(torch.equal(first.tensors[k], again.tensors[k]) for k in first.tensors)  # the same run, again
    assert len(kept.read_bytes()) > 1000  # kept whole this time


def test_a_checkpoint_folder_that_is_a_file_is_named_before_training(world, tmp_path, monkeypatch):
    from conceptkit.core.errors import InputError

    monkeypatch.setenv("CONCEPTKIT_MODELS_DIR", str(tmp_path))
    (tmp_path / "conceptkit").mkdir()
    (tmp_path / "conceptkit" / "checkpoints").write_text("my notes")
    steps = []
    with pytest.raises(InputError, match="checkpoints is a file, not a folder; move it away"):
        from conceptkit import NODE_CLASS_MAPPINGS as N

        N["ConceptKitLipschitzFinetune"]().train(world, torch.rand(1, 64, 64, 3), "<pet>", "creature", "", "lora", 2,
                                                 0.0, "frobenius", steps=2, learning_rate=1e-3, batch_size=1, seed=0)
    assert (tmp_path / "conceptkit" / "checkpoints").read_text() == "my notes" and steps == []


def test_a_models_folder_that_is_a_file_is_named_when_saving(world, tmp_path, monkeypatch):
    from conceptkit import NODE_CLASS_MAPPINGS as N
    from conceptkit.core.errors import ConceptKitError

    from helpers.concepts import lora_concept

    models = tmp_path / "models"
    models.write_text("not a folder")
    monkeypatch.setenv("CONCEPTKIT_MODELS_DIR", str(models))
    with pytest.raises(ConceptKitError, match=f"{models}"):
        N["ConceptKitSaveConcept"]().save(lora_concept(world), "pet", "counter")
    assert models.read_text() == "not a folder"


# --- workflows: every input of every node checked before anything runs ---------------------------------------------

def _save_after_sample(prefix: str, **sample_inputs) -> dict:
    return api(**{
        "1": {"class_type": "ConceptKitLoadModel", "inputs": {"model": "(embedded world model)"}},
        "2": {"class_type": "ConceptKitSample", "inputs": {"model": ["1", 0], "prompt": "a creature",
                                                           "negative_prompt": "", "seed": 0, "steps": 2, "cfg": 5.0,
                                                           "sampler": "ddim", "width": 0, "height": 0,
                                                           "batch_size": 1, **sample_inputs}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    })


@pytest.mark.parametrize("prefix,words", [("pet\x00x", "NUL"), ("../up", "without folders"), ("  ", "plain name")])
def test_a_bad_file_name_prefix_is_refused_before_sampling(tmp_path, capsys, prefix, words):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(_save_after_sample(prefix)))
    code, err = run(["run", str(path), "--out", str(tmp_path / "out"), "-q"], capsys)
    assert code == 2 and "nothing was run" in err and words in err and "Traceback" not in err, err
    assert written(tmp_path / "out") == []


def test_an_input_a_node_does_not_declare_is_refused_before_anything_runs(tmp_path, capsys):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(_save_after_sample("pet", sede=7)))
    code, err = run(["run", str(path), "--out", str(tmp_path / "out"), "-q"], capsys)
    assert code == 2 and "input 'sede': is not an input of this node" in err and "nothing was run" in err, err
    assert written(tmp_path / "out") == []


def test_a_chain_of_1200_nodes_validates_without_recursion(tmp_path, capsys):
    nodes = {"1": {"class_type": "ConceptKitLoadModel", "inputs": {"model": "(embedded world model)"}},
             "2": {"class_type": "ConceptKitLoadConcept", "inputs": {"concept_name": "no_such.safetensors"}}}
    for i in range(3, 1203):
        nodes[str(i)] = {"class_type": "ConceptKitApplyConcept", "inputs": {"model": [str(i - 1 if i > 3 else 1), 0],
                                                                            "concept": ["2", 0], "strength": 1.0}}
    nodes["1203"] = {"class_type": "ConceptKitSample", "inputs": {**_save_after_sample("x")["2"]["inputs"],
                                                                   "model": ["1202", 0]}}
    nodes["1204"] = {"class_type": "SaveImage", "inputs": {"images": ["1203", 0], "filename_prefix": "x"}}
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(nodes))
    code, err = run(["run", str(path), "--out", str(tmp_path / "out"), "-q"], capsys)
    assert code == 2 and "Traceback" not in err and "Recursion" not in err
    assert "node 2 (ConceptKitLoadConcept), input 'concept_name'" in err  # the one real problem, found
    assert written(tmp_path / "out") == []


def test_a_script_call_leaving_out_widgets_gets_their_declared_defaults_as_in_the_editor():
    from conceptkit import NODE_CLASS_MAPPINGS as N

    (model,) = N["ConceptKitLoadModel"]().load(model="embedded")  # device, dtype, prediction_type: the defaults
    assert model.family == "world" and model.device.type == "cpu"


def test_the_concept_encoder_refuses_an_empty_trigger_even_without_tuning(world):
    from conceptkit import NODE_CLASS_MAPPINGS as N
    from conceptkit.core.errors import InputError

    loader = N["ConceptKitLoadConceptEncoder"]
    (encoder,) = loader().load(loader.INPUT_TYPES()["required"]["encoder"][0][0])
    with pytest.raises(InputError, match="has no letters"):
        N["ConceptKitConceptEncoder"]().encode(world, encoder, torch.rand(1, 64, 64, 3), "  ", 0, 0)
