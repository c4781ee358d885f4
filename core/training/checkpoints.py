"""Training checkpoints as safetensors only: weights, optimizer moments and the step, written
atomically. Every random draw of our trainers is a pure function of (seed, step), so weights +
optimizer + step are all an exact resume needs."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ModelLoadError

STATE_FILE = "state.safetensors"
RESULT_FILE = "result.safetensors"  # a finished run's result, kept where a caller asks for it


def save_training_state(folder: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None,
                        step: int, extra: dict | None = None) -> Path:
    """Write `folder` (atomically: a temporary sibling renamed into place)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_state(tmp, modules, optimizer, step, extra)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half-written checkpoint behind
        raise
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
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


def latest_checkpoint(folder: Path) -> Path | None:
    candidates = sorted(Path(folder).glob("step_*[0-9]"), key=lambda p: int(p.name.split("_")[1]))
    return candidates[-1] if candidates else None


def prune_checkpoints(folder: Path, keep: int) -> None:
    candidates = sorted(Path(folder).glob("step_*[0-9]"), key=lambda p: int(p.name.split("_")[1]))
    for old in candidates[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


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
    for run in sorted(p for p in folder.glob("*") if p.is_dir() and not p.is_symlink()) if folder.is_dir() else []:
        newest = latest_checkpoint(run)
        marker = newest if newest is not None else run / RESULT_FILE
        if not marker.exists() or marker.is_symlink():
            continue
        size = sum(f.stat().st_size for f in run.rglob("*") if f.is_file() and not f.is_symlink())
        step = int(newest.name.split("_")[1]) if newest is not None else None
        runs.append(RunCheckpoints(run, step, marker.stat().st_mtime, size))
    return sorted(runs, key=lambda r: r.modified)


def remove_run(run: RunCheckpoints) -> None:
    """Delete one run's checkpoints (its folder, never through a link: a link inside it goes, not what it points
    to); a later queue of that run starts from step 0."""
    if run.path.is_symlink():
        raise ValueError(f"{run.path} is a link; a run folder is never removed through one")
    shutil.rmtree(run.path)
