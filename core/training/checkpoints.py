"""Training checkpoints as safetensors only: weights, optimizer moments and the step, written
atomically. Every random draw of our trainers is a pure function of (seed, step), so weights +
optimizer + step are all an exact resume needs."""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ModelLoadError
from ..files import guarded

STATE_FILE = "state.safetensors"
RESULT_FILE = "result.safetensors"  # a finished run's result, kept where a caller asks for it


def save_training_state(folder: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None,
                        step: int, extra: dict | None = None) -> Path:
    """Write `folder` (atomically: a temporary sibling renamed into place). A full disk or any other file-system
    error leaves no half-written checkpoint and the earlier ones as they were, and says so in one line."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    with guarded(folder, "write the training checkpoint", "free some disk space, or check that you may write there; "
                 "the earlier checkpoints are kept"):
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            _write_state(tmp, modules, optimizer, step, extra)
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder)
            tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder


def _write_state(tmp: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None,
                 step: int, extra: dict | None) -> None:
    tmp.mkdir(parents=True)
    tensors = {f"module.{name}.{k}": v.detach().cpu().contiguous()
               for name, module in modules.items() for k, v in module.state_dict().items()}
    if optimizer is not None:
        for gi, group in enumerate(optimizer.param_groups):
            for pi, param in enumerate(group["params"]):
                for key, value in optimizer.state.get(param, {}).items():
                    tensor = value if torch.is_tensor(value) else torch.tensor(value)
                    tensors[f"optim.{gi}.{pi}.{key}"] = tensor.detach().cpu().contiguous()
    metadata = {"step": str(step), "extra": json.dumps(extra or {})}
    save_file(tensors, str(tmp / STATE_FILE), metadata=metadata)


def load_training_state(folder: Path, modules: dict[str, torch.nn.Module],
                        optimizer: torch.optim.Optimizer | None) -> tuple[int, dict]:
    """Restore what save_training_state wrote; returns (step, extra)."""
    path = Path(folder) / STATE_FILE
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
    except Exception as e:  # noqa: BLE001 - any damage is reported the same way
        raise ModelLoadError(f"{path}: the training checkpoint cannot be read ({e}).") from None
    for name, module in modules.items():
        prefix = f"module.{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    if optimizer is not None:
        for gi, group in enumerate(optimizer.param_groups):
            for pi, param in enumerate(group["params"]):
                state = {k.split(".", 3)[3]: v.to(param.device) for k, v in tensors.items()
                         if k.startswith(f"optim.{gi}.{pi}.")}
                if state:
                    optimizer.state[param] = state
    return int(metadata["step"]), json.loads(metadata.get("extra", "{}"))


CHECKPOINT_NAME = re.compile(r"step_(\d+)")


def checkpoint_folders(folder: Path) -> list[Path]:
    """A run folder's complete checkpoints (step_N folders holding their state file), oldest first: anything else
    in it (a stray folder or file, a half-written checkpoint, a link) is neither read nor removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    with guarded(folder, "list the checkpoints in"):
        found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_NAME.fullmatch(p.name))
                 and p.is_dir() and not p.is_symlink() and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: Path) -> Path | None:
    found = checkpoint_folders(folder)
    return found[-1] if found else None


def prune_checkpoints(folder: Path, keep: int) -> None:
    for old in checkpoint_folders(folder)[:-keep]:
        with guarded(old, "remove the old checkpoint"):
            shutil.rmtree(old)


@dataclass(frozen=True)
class RunCheckpoints:
    """What one run left in a folder of runs: the checkpoints of an unfinished run, or a finished run's kept
    result."""

    path: Path
    step: int | None  # the newest checkpoint's step; None: finished, its result kept
    modified: float  # when it was written (seconds since the epoch)
    size: int  # bytes, all its checkpoints together

    def age_days(self, now: float | None = None) -> float:
        return ((time.time() if now is None else now) - self.modified) / 86400


def stored_runs(folder: Path) -> list[RunCheckpoints]:
    """Runs in `folder` (one sub-folder per run, as the training nodes keep them), oldest first: runs cancelled
    or crashed and never queued again (their checkpoints), and finished runs (their kept result)."""
    runs = []
    folder = Path(folder)
    with guarded(folder, "list the runs in"):
        for run in sorted(p for p in folder.glob("*") if p.is_dir() and not p.is_symlink()) if folder.is_dir() else []:
            newest = latest_checkpoint(run)
            marker = newest if newest is not None else run / RESULT_FILE
            if newest is None and (not marker.is_file() or marker.is_symlink()):
                continue  # neither a checkpoint nor a kept result of its own
            size = sum(f.stat().st_size for f in run.rglob("*") if f.is_file() and not f.is_symlink())
            step = int(CHECKPOINT_NAME.fullmatch(newest.name).group(1)) if newest is not None else None
            runs.append(RunCheckpoints(run, step, marker.stat().st_mtime, size))
    return sorted(runs, key=lambda r: r.modified)


def remove_run(run: RunCheckpoints) -> None:
    """Delete what one run wrote: its checkpoints and its kept result, then its folder if nothing else is in it
    (anything else, a link included, stays, and never is anything removed through a link); a later queue of that
    run starts from step 0."""
    if run.path.is_symlink():
        raise ValueError(f"{run.path} is a link; a run folder is never removed through one")
    with guarded(run.path, "remove the run"):
        for checkpoint in checkpoint_folders(run.path) + [p for p in run.path.glob("step_*.tmp")
                                                           if p.is_dir() and not p.is_symlink()]:
            shutil.rmtree(checkpoint)  # its checkpoints, and what a checkpoint write cut short left
        result = run.path / RESULT_FILE
        if result.is_file() and not result.is_symlink():
            result.unlink()
        if not any(run.path.iterdir()):
            run.path.rmdir()
