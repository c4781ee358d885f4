"""Commands that write or delete touch only what they made: `conceptkit checkpoints` lists without creating,
takes only sane ages and removes only its own runs' folders, never through a link; `conceptkit pretrain-encoder`
replaces only a Concept Encoder file."""

from __future__ import annotations

import os

import pytest

from conceptkit.cli import main


def _run(models, name: str, age_days: float = 0.0):
    folder = models / "conceptkit" / "checkpoints" / name / "step_3"
    folder.mkdir(parents=True)
    (folder / "state.safetensors").write_bytes(b"x" * 10)
    stamp = os.path.getmtime(folder) - age_days * 86400
    os.utime(folder, (stamp, stamp))
    return folder.parent


def test_listing_a_models_folder_without_runs_creates_nothing(tmp_path, capsys):
    assert main(["checkpoints", "--models", str(tmp_path / "models")]) == 0
    assert "0 stored run(s)" in capsys.readouterr().out
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("age", ["-1", "nan", "inf", "soon"])
def test_an_age_that_is_not_a_finite_number_of_days_is_refused_before_anything_is_removed(tmp_path, capsys, age):
    run = _run(tmp_path, "old", age_days=30)
    with pytest.raises(SystemExit) as stopped:
        main(["checkpoints", "--models", str(tmp_path), "--remove-older-than", age])
    assert stopped.value.code == 2
    assert "--remove-older-than" in capsys.readouterr().err
    assert run.is_dir()


def test_removing_old_runs_never_follows_a_link_out_of_the_folder(tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    old = _run(tmp_path, "old", age_days=30)
    (old / "notes").symlink_to(outside, target_is_directory=True)  # a link inside a run: neither it nor its target go
    linked_step = _run(tmp_path, "linked_step", age_days=30)
    (linked_step / "step_9").symlink_to(outside, target_is_directory=True)  # its newest "checkpoint" is a link
    (tmp_path / "conceptkit" / "checkpoints" / "linked").symlink_to(outside, target_is_directory=True)
    new, plain = _run(tmp_path, "new"), _run(tmp_path, "plain", age_days=30)
    assert main(["checkpoints", "--models", str(tmp_path), "--remove-older-than", "1"]) == 0
    assert not plain.exists() and new.is_dir()  # a run holding only what training wrote goes whole
    assert not (old / "step_3").exists() and (old / "notes").is_symlink()
    assert (outside / "keep.txt").read_text() == "mine"
    assert (tmp_path / "conceptkit" / "checkpoints" / "linked").is_symlink() and linked_step.is_dir()


@pytest.mark.parametrize("kind", ["text file", "other safetensors", "folder"])
def test_pretrain_encoder_never_replaces_what_is_not_an_encoder_file(tmp_path, capsys, kind):
    import torch
    from safetensors.torch import save_file

    out = tmp_path / "mine.safetensors"
    if kind == "text file":
        out.write_text("my notes")
    elif kind == "other safetensors":
        save_file({"w": torch.zeros(2)}, str(out), metadata={"conceptkit": "{}"})
    else:
        out.mkdir()
    before = out.read_bytes() if out.is_file() else None
    code = main(["pretrain-encoder", "--out", str(out), "--workdir", str(tmp_path / "run"), "--steps", "1", "-q"])
    assert code == 2
    assert f"--out {out}" in capsys.readouterr().err
    assert (out.read_bytes() if out.is_file() else None) == before and not (tmp_path / "run").exists()


# --- every numeric option is checked like a node input, before anything is loaded or written ----------------------

BAD_OPTIONS = {  # name -> (command line after the command, the option the message names)
    "seed -1": (["--seed", "-1"], "--seed"),
    "seed above 64 bits": (["--seed", str(2**64)], "--seed"),
    "seed not whole": (["--seed", "1.5"], "--seed"),
    "negative learning rate": (["--learning-rate", "-0.001"], "--learning-rate"),
    "learning rate 0": (["--learning-rate", "0"], "--learning-rate"),
    "learning rate NaN": (["--learning-rate", "nan"], "--learning-rate"),
    "learning rate infinite": (["--learning-rate", "inf"], "--learning-rate"),
    "steps 0": (["--steps", "0"], "--steps"),
    "steps not a number": (["--steps", "many"], "--steps"),
    "batch size 0": (["--batch-size", "0"], "--batch-size"),
    "export every 0": (["--export-every", "0"], "--export-every"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_pretrain_encoder_refuses_a_bad_number_before_anything_is_made(tmp_path, capsys, case):
    options, named = BAD_OPTIONS[case]
    out, workdir = tmp_path / "enc.safetensors", tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        main(["pretrain-encoder", "--out", str(out), "--workdir", str(workdir), *options, "-q"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and named in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["bench", "finetune"], ["world", "check"]])
def test_bench_and_world_check_refuse_a_negative_seed(capsys, command):
    with pytest.raises(SystemExit) as stopped:
        main([*command, "--seed", "-1"])
    assert stopped.value.code == 2 and "--seed" in capsys.readouterr().err


def test_pretrain_encoder_refuses_a_work_folder_that_is_a_file_and_leaves_it(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.write_text("my notes")
    code = main(["pretrain-encoder", "--out", str(tmp_path / "enc.safetensors"), "--workdir", str(workdir), "--steps",
                 "1", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and f"--workdir {workdir} is a file" in err and "checkpoint" not in err.split(";")[0]
    assert workdir.read_text() == "my notes" and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_pretrain_encoder_refuses_an_out_folder_that_does_not_exist(tmp_path, capsys):
    code = main(["pretrain-encoder", "--out", str(tmp_path / "no" / "enc.safetensors"), "--workdir",
                 str(tmp_path / "run"), "--steps", "1", "-q"])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_pretrain_encoder_names_a_damaged_image_in_its_folder_before_training(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    images = tmp_path / "cats"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    code = main(["pretrain-encoder", "--out", str(tmp_path / "enc.safetensors"), "--workdir", str(tmp_path / "run"),
                 "--images", str(images), "--class-word", "cat", "--steps", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "broken.png: not a readable image" in err and "remove it" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cats"]


def test_pretrain_encoder_refuses_an_encoder_file_holding_nan_to_go_on_from(tmp_path, capsys):
    from safetensors.torch import save_file

    from conceptkit.core.methods.concept_encoder.files import EMBEDDED_ENCODER
    from conceptkit.core.safetensors_io import load_safetensors, read_safetensors_metadata

    tensors = load_safetensors(EMBEDDED_ENCODER)
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].clone().fill_(float("nan"))
    damaged = tmp_path / "nan.safetensors"
    save_file(tensors, str(damaged), metadata=read_safetensors_metadata(EMBEDDED_ENCODER))
    code = main(["pretrain-encoder", "--out", str(tmp_path / "enc.safetensors"), "--workdir", str(tmp_path / "run"),
                 "--init", str(damaged), "--steps", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "not numbers (NaN or infinity)" in err and "diverged" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.safetensors"]


# --- checkpoint folders: what is not a checkpoint is neither read nor removed ---------------------------------------

def test_stray_things_in_a_run_folder_break_neither_listing_nor_removal(tmp_path, capsys):
    run = _run(tmp_path, "old", age_days=30)
    (run / "notes").mkdir()
    (run / "notes" / "todo.txt").write_text("mine")
    (run / "step_x9").mkdir()  # a stray folder that looks like a checkpoint
    (run / "step_12").mkdir()  # a checkpoint whose write was cut short: no state file
    (run / "step_7").write_text("a file, not a checkpoint")
    assert main(["checkpoints", "--models", str(tmp_path)]) == 0
    assert "unfinished at step 3" in capsys.readouterr().out
    assert main(["checkpoints", "--models", str(tmp_path), "--remove", "old"]) == 0
    assert not (run / "step_3").exists()
    assert sorted(p.name for p in run.iterdir()) == ["notes", "step_12", "step_7", "step_x9"]
    assert (run / "notes" / "todo.txt").read_text() == "mine"


def test_checkpoints_lists_nothing_in_a_models_folder_that_is_a_file_and_leaves_it(tmp_path, capsys):
    models = tmp_path / "models"
    models.write_text("not a folder")
    assert main(["checkpoints", "--models", str(models)]) == 0
    assert "0 stored run(s)" in capsys.readouterr().out
    assert models.read_text() == "not a folder"


@pytest.mark.parametrize("case", ["json is a folder", "json under a file", "report is a file", "world model missing",
                                  "bench model missing", "encoder out not safetensors"])
def test_a_command_refuses_a_bad_target_before_its_long_work(tmp_path, capsys, case):
    afile = tmp_path / "afile.txt"
    afile.write_text("mine")
    argv = {"json is a folder": ["bench", "finetune", "--json", str(tmp_path)],
            "json under a file": ["bench", "finetune", "--json", str(afile / "x.json")],
            "report is a file": ["bench", "finetune", "--report", str(afile)],
            "world model missing": ["world", "check", "--model", str(tmp_path / "nothere")],
            "bench model missing": ["bench", "finetune", "--model", str(tmp_path / "nothere")],
            "encoder out not safetensors": ["pretrain-encoder", "--out", str(tmp_path / "enc.txt"), "--workdir",
                                            str(tmp_path / "run")]}[case]
    assert main([*argv, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("conceptkit: error:") and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile.txt"] and afile.read_text() == "mine"
