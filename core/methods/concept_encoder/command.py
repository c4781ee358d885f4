"""`conceptkit pretrain-encoder`: a domain encoder, pre-trained in the background, resumable."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ...errors import ConceptKitError, InputError
from ...model import EMBEDDED, load_model
from ...model.image_features import load_clip_vision
from ...safetensors_io import read_safetensors_metadata
from .backbones import backbone_for
from .domain import folder_domain
from .files import METADATA_KEY, Pretrained, load_encoder, save_encoder
from .training import PRETRAIN_TRIGGER, PretrainSettings, pretrain_encoder

log = logging.getLogger("conceptkit.concept_encoder")


def check_replaceable(out: Path) -> None:
    """`out` may be written: nothing is there, or a Concept Encoder file (this command's own kind), never a
    folder, a link or another file."""
    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise InputError(f"--out {out} is a folder or a link; give the path of an encoder file (.safetensors).")
    if out.exists():
        try:
            ours = METADATA_KEY in read_safetensors_metadata(out)
        except ConceptKitError:
            ours = False
        if not ours:
            raise InputError(f"--out {out} exists and is not a Concept Encoder file, so it is left as it is; give "
                             "another path, or remove that file yourself.")


def pretrain_command(out: Path, *, model_path: str | None = None, workdir: Path, steps: int, batch_size: int,
                     learning_rate: float, seed: int = 0, export_every: int = 500, clip_vision: Path | None = None,
                     images: Path | None = None, class_word: str | None = None, init: Path | None = None) -> Path:
    """Pre-train (or go on pre-training `init`) and write the encoder to `out`; the run's checkpoints live in
    `workdir` (the same command resumes), and `out` is rewritten every `export_every` steps."""
    check_replaceable(Path(out))
    if Path(workdir).exists() and not Path(workdir).is_dir():
        raise InputError(f"--workdir {workdir} is a file; give a folder for the run's checkpoints (a new one is "
                         "made).")
    if Path(out).suffix != ".safetensors":
        raise InputError(f"--out {out}: an encoder file ends in .safetensors; give such a path.")
    if not Path(out).parent.is_dir():
        raise InputError(f"--out {out}: the folder {Path(out).parent} does not exist; create it first.")
    model = load_model(model_path or EMBEDDED)
    backbone = backbone_for(model, load_clip_vision(clip_vision) if clip_vision else None)
    data = None
    if images is not None:
        if not class_word:
            raise InputError("--images needs --class-word: the kind of thing all the images show (e.g. 'cat').")
        data = folder_domain(images, model.default_size, PRETRAIN_TRIGGER)
    if init is not None:
        start = load_encoder(init, model)
    else:
        start = Pretrained.fresh(model, backbone, class_word or "creature", seed=seed)
    settings = PretrainSettings(steps=steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed)
    began = time.monotonic()
    from accelerate import PartialState

    main_process = PartialState(cpu=model.device.type == "cpu").is_main_process  # under accelerate launch: one writer

    def snapshot(step: int, so_far: Pretrained) -> None:
        if not main_process:
            return
        save_encoder(so_far, out, if_exists="overwrite")
        log.info("step %d: encoder written to %s (%.0f s)", step, out, time.monotonic() - began)

    def progress(step, total, preview):
        if step % 50 == 0:
            log.info("pre-training step %d of %d (%.0f s)", step, total, time.monotonic() - began)

    trained, result = pretrain_encoder(model, backbone, start, settings, data, checkpoint_dir=Path(workdir),
                                       progress=progress, snapshot=snapshot, snapshot_every=export_every)
    if not main_process:
        return Path(out)
    written = save_encoder(trained, out, if_exists="overwrite")
    log.info("pre-training done: %d steps, last loss %.4f; encoder written to %s", trained.steps, result.losses[-1],
             written)
    return written
