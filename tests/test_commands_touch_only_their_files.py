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
    (old / "notes").symlink_to(outside, target_is_directory=True)  # a link inside a run: it goes, its target stays
    linked_step = _run(tmp_path, "linked_step", age_days=30)
    (linked_step / "step_9").symlink_to(outside, target_is_directory=True)  # its newest "checkpoint" is a link
    (tmp_path / "conceptkit" / "checkpoints" / "linked").symlink_to(outside, target_is_directory=True)
    new = _run(tmp_path, "new")
    assert main(["checkpoints", "--models", str(tmp_path), "--remove-older-than", "1"]) == 0
    assert not old.exists() and new.is_dir()
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
