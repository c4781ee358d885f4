"""The training engine: what every training loop of ConceptKit shares, so a loop holds only its math.

One engine owns a run: it resumes from the newest checkpoint of the run's folder (the settings must
match), steps the optimizer through HF accelerate (modules and optimizer go through
`accelerator.prepare`, so under `accelerate launch` gradients are averaged across processes), clips
gradients, refuses a loss that is not finite, checkpoints every N steps and whenever the run stops
early (Cancel, an interrupt from a progress display, an error, a time limit), reports progress with
lazy previews, and honours Cancel within one step. Every random draw of our loops is a pure function
of (seed, step, process), so trained tensors + optimizer moments + the step are an exact resume.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from ..errors import Cancelled, ConceptKitError, Diverged, InputError
from ..files import make_folder
from .checkpoints import (
    checkpoint_folders,
    latest_checkpoint,
    load_training_state,
    prune_checkpoints,
    save_training_state,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

log = logging.getLogger("conceptkit.training")

ProgressFn = Callable[[int, int, Callable[[], Image.Image | None]], None]


def step_generator(seed: int, step: int, rank: int, stream: int = 0) -> torch.Generator:
    """A generator that is a stable function of (seed, step, process, stream) (never Python's hash())."""
    state = np.random.SeedSequence([seed, step, rank, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


@dataclass
class RunSettings:
    steps: int
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 0  # 0: only when the run stops early
    keep_checkpoints: int = 2
    checkpoint_at_end: bool = False  # keep the last step's checkpoint (a trainer that exports from it)
    signature: str | None = None  # what a checkpoint must agree on to be resumed (None: not checked)
    grad_clip: float | None = None
    name: str = "training"
    done: Callable[[int], bool] | None = None  # asked after every step (and on resume): True ends it, finished


@dataclass
class RunOutcome:
    losses: list[float]  # one per step, from step 0 (a resumed run's earlier losses come from its checkpoint)
    resumed_from: int
    finished: bool  # False when `stop` ended the run early (True when `done` ended it before its steps)


def raise_if_cancelled(settings: RunSettings, cancel: Callable[[], bool] | None, step: int) -> None:
    """Cancelled, naming the step and where the run resumes, when `cancel()` says so."""
    if cancel is not None and cancel():
        raise Cancelled(f"{settings.name} was cancelled at step {step} of {settings.steps}" + (
            f"; run it again to resume from {settings.checkpoint_dir}." if settings.checkpoint_dir else "."))


class TrainingEngine:
    def __init__(self, settings: RunSettings, accelerator: Accelerator, *, progress: ProgressFn | None = None,
                 cancel: Callable[[], bool] | None = None, stop: Callable[[], bool] | None = None):
        if settings.steps < 1:
            raise InputError(f"steps must be at least 1 (got {settings.steps}).")
        self.settings, self.accelerator = settings, accelerator
        self.progress, self.cancel, self.stop = progress, cancel, stop

    def prepare(self, *objects):
        """Modules and optimizers through accelerate (DDP wrapping under `accelerate launch`)."""
        return self.accelerator.prepare(*objects)

    def _save(self, state: dict, optimizer, step: int, losses: list[float]) -> None:
        folder = self.settings.checkpoint_dir
        if folder is not None and not _all_finite(state):
            log.warning("%s: step %d has weights that are not finite numbers; not checkpointed", self.settings.name,
                        step)
            return
        if folder is not None and self.accelerator.is_main_process:
            make_folder(Path(folder))
            save_training_state(Path(folder) / f"step_{step}", state, optimizer, step,
                                extra={"signature": self.settings.signature, "losses": losses})
            prune_checkpoints(Path(folder), self.settings.keep_checkpoints)

    def _diverged_message(self, step: int, loss: float) -> str:
        folder = self.settings.checkpoint_dir
        kept = latest_checkpoint(folder) if folder is not None and Path(folder).is_dir() else None
        where = (f" Its checkpoint {kept} is from before; to start over instead, delete {folder}." if kept else "")
        return (f"{self.settings.name}: training diverged at step {step} (the loss became {loss}); nothing was "
                f"checkpointed from it. Lower the learning rate (or use fp32) and run again.{where}")

    def remove_checkpoints(self) -> None:
        """Remove the run's checkpoints (a finished run has nothing to resume); other files in the folder stay."""
        folder = self.settings.checkpoint_dir
        if folder is None or not self.accelerator.is_main_process:
            return
        for checkpoint in checkpoint_folders(folder):  # its own checkpoints only
            shutil.rmtree(checkpoint, ignore_errors=True)
        with contextlib.suppress(OSError):
            Path(folder).rmdir()  # only when nothing else is in it

    def _resume(self, state: dict, optimizer) -> tuple[int, list[float]]:
        folder = self.settings.checkpoint_dir
        if folder is None or (last := latest_checkpoint(folder)) is None:
            return 0, []
        step, extra = load_training_state(last, state, optimizer)
        if self.settings.signature is not None and extra.get("signature") != self.settings.signature:
            raise InputError(f"the checkpoints in {folder} were made with other settings; choose another "
                             "checkpoint folder, or delete it to start over.")
        log.info("%s: resumed at step %d of %d", self.settings.name, step, self.settings.steps)
        return step, list(extra.get("losses", []))

    def run(
        self,
        loss_at: Callable[[int], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        state: dict[str, torch.nn.Module],
        *,
        params: Sequence[torch.nn.Parameter] = (),
        before_step: Callable[[int], None] | None = None,
        after_step: Callable[[int, float], None] | None = None,
        preview_at: Callable[[int], Callable[[], Image.Image | None]] | None = None,
    ) -> RunOutcome:
        """Train from the newest checkpoint (or step 0) to `settings.steps`, or until `settings.done(step)`:
        `loss_at(step)` is the step's loss; `state` names what a checkpoint holds (modules, or anything with
        state_dict/load_state_dict)."""
        s = self.settings
        step, losses = self._resume(state, optimizer)
        start = step
        done = s.done is not None and step > 0 and s.done(step)
        try:  # on Cancel (ours, or ComfyUI's interrupt from cancel() or its progress bar) and on errors,
            # checkpoint the last finished step so that the run resumes there
            while step < s.steps and not done:
                raise_if_cancelled(s, self.cancel, step)
                if before_step is not None:
                    before_step(step)
                loss = loss_at(step)
                if not torch.isfinite(loss):
                    raise Diverged(self._diverged_message(step, loss.item()))
                optimizer.zero_grad(set_to_none=True)
                self.accelerator.backward(loss)
                if s.grad_clip is not None:
                    self.accelerator.clip_grad_norm_(params, s.grad_clip)
                optimizer.step()
                step += 1
                losses.append(float(loss.item()))
                if after_step is not None:
                    after_step(step, losses[-1])
                done = s.done is not None and s.done(step)
                if done and s.checkpoint_at_end:
                    self._save(state, optimizer, step, losses)
                elif s.checkpoint_every and step % s.checkpoint_every == 0 and (step < s.steps or s.checkpoint_at_end):
                    self._save(state, optimizer, step, losses)
                elif step == s.steps and s.checkpoint_at_end:
                    self._save(state, optimizer, step, losses)
                if self.progress is not None:
                    total = step if done else s.steps
                    self.progress(step, total, preview_at(step) if preview_at else _no_preview)
                if self.stop is not None and self.stop() and step < s.steps and not done:  # stop() sees every step
                    self._save(state, optimizer, step, losses)
                    break
        except Diverged:
            raise  # a diverged step is never checkpointed: resuming it would diverge again
        except BaseException:
            try:
                self._save(state, optimizer, step, losses)
            except ConceptKitError as e:  # the error that stopped the run is the one to report
                log.warning("%s", e)
            raise
        return RunOutcome(losses, start, step >= s.steps or done)


def _all_finite(state: dict) -> bool:
    for module in state.values():
        for value in module.state_dict().values():
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
                return False
    return True


def _no_preview() -> None:
    return None


DEFAULT_PREVIEW_SHARE = 0.1  # at most this share of a run's compute goes to previews
BACKWARD_PASSES = 2  # a backward pass costs about two forward passes


@dataclass(frozen=True)
class PreviewBudget:
    """When a training run shows a preview: only while the previews so far, this one included, cost at most
    `share` of the training done, counted in denoiser passes over one sample (a preview: `preview_passes`; a
    training step: `step_passes`, forward and backward). Deterministic, so a resumed run previews alike."""

    share: float
    preview_passes: float
    step_passes: float

    @classmethod
    def for_training(cls, share: float, preview_passes: float, batch_size: int, step_passes: float | None = None
                     ) -> PreviewBudget:
        """A step costs `step_passes`, or by default a forward and a backward pass of the batch."""
        return cls(share, preview_passes, step_passes or batch_size * (1 + BACKWARD_PASSES))

    def shown_by(self, step: int) -> int:
        """How many previews the budget allows once `step` steps are done."""
        if self.share <= 0:
            return 0
        preview_passes = self.preview_passes or self.step_passes  # a preview of unknown cost: one step's
        return int(self.share * step * self.step_passes // preview_passes)

    def due(self, step: int) -> bool:
        """Whether a preview is shown after step `step` (steps count from 1)."""
        return self.shown_by(step) > self.shown_by(step - 1)
