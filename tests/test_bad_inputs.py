"""Bad input through `conceptkit run`: a clear message naming the problem, exit status 2, no traceback,
and no file written. (Issue 13's catalog, in progress: workflow files, values, overrides, outputs.)"""

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
