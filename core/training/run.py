"""A training run: what every training in ConceptKit shares, so that each method's training is a short recipe.

A run owns the model as it trains (the concepts it carries in effect and frozen; the run's own word, if it has
one, served from trained or computed vectors), what trains (a TrainableSet), where batches come from (a
DataSource), what a step minimizes (an objective plus loss terms), the optimizer, and the engine: resume from its
folder's newest checkpoint (same settings), Cancel within a step, progress with lazy previews, checkpoints. It
puts the model back exactly as it was at the end, on Cancel and on errors. Its folder (`RunFolder`) is named
from what the run is (images, settings, base model), so queueing the same run again resumes it, and keeps a
finished run's result until its caller has saved it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np
import torch
from PIL import Image

from ..errors import ConceptKitError
from ..files import guarded, make_folder
from ..model import Model, PatchState, add_patch, patches_in_effect
from ..model.inference_mode import leave_inference_mode
from .checkpoints import RESULT_FILE
from .data import DataSource
from .engine import (
    DEFAULT_PREVIEW_SHARE,
    PreviewBudget,
    ProgressFn,
    RunOutcome,
    RunSettings,
    TrainingEngine,
    raise_if_cancelled,
    step_generator,
)
from .losses import LossTerm
from .objective import DenoisingObjective, Rider, ride_alone, teach
from .trainable import TrainableSet

if TYPE_CHECKING:
    from accelerate import Accelerator

log = logging.getLogger("conceptkit.training")
MIXED_PRECISION = ("no", "fp16", "bf16")


class Signed(Protocol):
    def signature(self) -> str: ...


T = TypeVar("T")


@dataclass(frozen=True)
class RunFolder:
    """Where a run checkpoints, named from what the run is, and where its result is kept once it finished."""

    path: Path

    @classmethod
    def named(cls, root: Path, images, settings: Signed, base: str = "") -> RunFolder:
        """`root/<identity>`: the same for the same images, settings (anything with a `signature()`) and base model
        (`base`: its fingerprint), so a crashed or cancelled run resumes when started again; different otherwise."""
        digest = hashlib.sha256()  # a list of images of different sizes hashes as its images one after another
        for part in (images if isinstance(images, list) else [images]):
            pixels = part if isinstance(part, torch.Tensor) else torch.as_tensor(np.asarray(part))
            digest.update(pixels.detach().float().cpu().numpy().tobytes())
        digest.update(settings.signature().encode())
        digest.update(base.encode())
        return cls(Path(root) / digest.hexdigest()[:20])

    @property
    def identity(self) -> str:
        return self.path.name

    @property
    def result_file(self) -> Path:
        return self.path / RESULT_FILE

    def keep(self, save: Callable[[Path], None]) -> None:
        """Keep a finished run's result (`save(path)` writes it) until `conceptkit checkpoints` removes it: a save
        that fails after training loses nothing, and the next queue returns the result at once."""
        make_folder(self.path)
        save(self.result_file)

    def kept(self, load: Callable[[Path], T | None]) -> T | None:
        """The kept result (`load(path)`, None when it is not this run's), or None. A kept result that cannot be
        read (cut short by a full disk, damaged since) is removed with a warning that says so: the run trains
        again."""
        if not self.result_file.is_file():
            return None
        try:
            return load(self.result_file)
        except ConceptKitError as e:
            log.warning("the kept result %s cannot be read (%s); it is removed and the run trains again.",
                        self.result_file, e)
            with guarded(self.result_file, "remove the damaged kept result"):
                self.result_file.unlink()
            return None


@dataclass
class RunHooks:
    """How a run talks to the one who started it: `progress(step, total, preview)` every step, where `preview()`
    renders `preview(model)` of the run so far when the PreviewBudget allows (previews cost at most
    `preview_share` of the training; `preview.passes` says what one costs) and gives None in between; `cancel()`
    is asked before every step, and between the teacher's calls of a block (a step that teaches 16 steps' riders);
    `on_finished(result)` runs before a finished run removes its checkpoints (a
    caller that keeps the result loses nothing if it then fails)."""

    progress: ProgressFn | None = None
    cancel: Callable[[], bool] | None = None
    preview: Callable[[Model], Image.Image | None] | None = None
    preview_share: float = DEFAULT_PREVIEW_SHARE
    on_finished: Callable[[object], None] | None = None


@dataclass
class StepSettings:
    """What one step draws and how it computes."""

    batch_size: int
    seed: int
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    passes: float | None = None  # denoiser passes over one sample a step costs (None: the batch forward and back)


@dataclass(frozen=True)
class RunToken:
    """The run's own word as a patch: served from the trainable set's token vectors while the run lasts (an
    objective may serve computed vectors in their place, see `TrainingRun.serving_token`)."""

    word: str
    vectors: tuple[torch.Tensor, ...]

    @property
    def triggers(self) -> tuple[str, ...]:
        return (self.word,)

    def enter(self, model: Model, state: PatchState) -> None:
        state.add_token(self.word, list(self.vectors), [None] * len(self.vectors))


@dataclass
class TrainingRun:
    """One training run (see the module's docstring). The objective and the loss terms read it (objective.Run):
    `model` (as it trains), `trainable`, `accelerator`, `noise_scheduler`, `batch_size`, `teacher()` and
    `serving_token(vectors)`."""

    model: Model
    trains: Callable[[Model], TrainableSet]  # builds what trains, on the model with its concepts in effect
    data: DataSource
    settings: RunSettings
    per_step: StepSettings
    optimizer: Callable[[TrainableSet], torch.optim.Optimizer]
    objective: Callable = field(default_factory=DenoisingObjective)
    loss_terms: list[LossTerm] = field(default_factory=list)
    token: str | None = None  # the run's own word, if it has one
    companions: tuple[str, ...] = ()  # the words of the run's other subjects (trainable.companion_tokens)
    train_unet_mode: bool = True  # the UNet in training mode (dropout) while it runs
    hooks: RunHooks = field(default_factory=RunHooks)
    accelerator: Accelerator | None = None
    trainable: TrainableSet | None = None  # built when the run starts
    _token_state: PatchState | None = None

    def __post_init__(self):
        from accelerate import Accelerator
        from diffusers import DDPMScheduler

        self.accelerator = Accelerator(mixed_precision=self.per_step.mixed_precision,
                                       cpu=self.model.device.type == "cpu")
        self.noise_scheduler = DDPMScheduler.from_config(self.model.scheduler_config)

    @property
    def batch_size(self) -> int:
        return self.per_step.batch_size

    @contextmanager
    def teacher(self) -> Iterator[Model]:
        """The model as it was before the run (with the concepts it carried), for the block; no gradients."""
        with torch.no_grad(), self.trainable.disabled():
            yield self.model

    def serving_token(self, vectors: list[torch.Tensor]):
        """Serve `vectors` ([B, dim] each: one per prompt) for the run's word for the block (an objective whose
        token vector is computed per sample, as an image encoder's)."""
        return self._token_state.serving(self.token, vectors)

    def train(self, collect: Callable[[TrainableSet, RunOutcome], T]) -> T:
        """Build what trains, train it to `settings.steps` from the newest checkpoint and return `collect(trainable,
        outcome)`, taken while what trained is still in place (a concept's tensors). The concepts the model
        carries are in effect and frozen throughout; the model is put back as it was in every case. Call it
        inside `training_mode(model)`."""
        with patches_in_effect(self.model, fold_lora=True):  # the carried concepts' LoRAs cost nothing per step
            self.trainable = self.trains(self.model)
            try:
                return self._train(collect)
            finally:
                self.trainable.restore()

    def _train(self, collect):
        hooks, unet = self.hooks, self.model.unet
        budget = PreviewBudget.for_training(hooks.preview_share, getattr(hooks.preview, "passes", 0),
                                            self.per_step.batch_size, self.per_step.passes)
        engine = TrainingEngine(self.settings, self.accelerator, progress=hooks.progress, cancel=hooks.cancel)
        unet_mode, checkpointing = unet.training, unet.is_gradient_checkpointing
        try:
            base, carried = self.model, len(self.model.patches)
            for word, vectors in zip((self.token, *self.companions), self.trainable.trigger_tokens(), strict=True):
                if word is not None:  # a run without a word of its own (SGE) serves none
                    base = add_patch(base, RunToken(word, tuple(vectors)))
            self.model = replace(base, patches=())  # the model as it trains: the patches below are in effect
            if self.per_step.gradient_checkpointing:
                unet.enable_gradient_checkpointing()
            step_loss, optimizer = engine.prepare(StepLoss(self), self.optimizer(self.trainable))
            with patches_in_effect(replace(base, patches=base.patches[carried:])) as state:
                self._token_state = state
                unet.train(self.train_unet_mode)
                outcome = engine.run(step_loss, optimizer, {"trainable": _TensorState(self.trainable.state())},
                                     preview_at=lambda step: self._preview(hooks.preview if budget.due(step)
                                                                           else None))
            result = collect(self.trainable, outcome)
            if outcome.finished:
                if hooks.on_finished is not None:
                    hooks.on_finished(result)
                engine.remove_checkpoints()
            return result
        finally:
            unet.train(unet_mode)
            if self.per_step.gradient_checkpointing and not checkpointing:
                unet.disable_gradient_checkpointing()

    def _preview(self, preview: Callable[[Model], Image.Image | None] | None):
        """A lazy preview of the run as it is now (rendered only if the progress display asks for it)."""
        if preview is None:
            return lambda: None

        def render():
            was_training = self.model.unet.training
            self.model.unet.eval()
            try:
                with torch.no_grad():
                    return preview(self.model)
            finally:
                self.model.unet.train(was_training)

        return render


@contextmanager
def training_mode(model: Model) -> Iterator[Model]:
    """Autograd on for the block, also under ComfyUI, which runs nodes under torch.inference_mode(): weights
    created in inference mode cannot take part in training, so they are replaced by ordinary copies first."""
    with torch.inference_mode(False), torch.enable_grad():
        leave_inference_mode(model)
        yield model


RIDERS_AHEAD = 16  # steps whose riders are drawn, and taught, together (a block starts at a multiple of it)


class StepLoss(torch.nn.Module):
    """One step's loss: the objective on the data source's batch plus the loss terms, those that ride (`ride`) in
    the objective's UNet pass when it shares it. A module, so that `accelerator.prepare` can wrap it (DDP averages the
    trained parameters' gradients across processes).
    Riders are drawn `RIDERS_AHEAD` steps at a time, each from its own stream of the step's seed, and the taught
    ones taught together: the teacher's weights are read once for the block, not at every step. A block is the same
    whatever step the run resumes at."""

    def __init__(self, run: TrainingRun):
        super().__init__()
        self.run = run
        self.unet = run.model.unet
        self.text_encoders = torch.nn.ModuleList(run.model.text_encoders)
        self.token = torch.nn.ParameterList(run.trainable.token_parameters())
        self.trained = torch.nn.ModuleList(run.trainable.modules())
        self.riding = [t for t in run.loss_terms if hasattr(t, "ride")]
        self.alone = [t for t in run.loss_terms if not hasattr(t, "ride")]
        self._ahead: dict[int, list[Rider]] = {}

    def forward(self, step: int) -> torch.Tensor:
        run = self.run
        gen = step_generator(run.per_step.seed, step, run.accelerator.process_index)
        batch = run.data.batch(step, run.per_step.batch_size, gen)
        riders = self._riders(step)
        if riders and getattr(run.objective, "shares_pass", False):
            loss = run.objective(run, batch, gen, riders)
        else:
            loss = run.objective(run, batch, gen)
            for rider in riders:
                loss = loss + ride_alone(run, rider)
        for term in self.alone:
            loss = loss + term(run, step, gen)
        return loss

    def _riders(self, step: int) -> list[Rider]:
        if not self.riding:
            return []
        if step not in self._ahead:
            run = self.run
            start = step - step % RIDERS_AHEAD
            self._ahead = {s: [term.ride(run, s, step_generator(run.per_step.seed, s, run.accelerator.process_index,
                                                                 stream))
                               for stream, term in enumerate(self.riding, start=1)]
                           for s in range(start, min(start + RIDERS_AHEAD, run.settings.steps))}
            teach(run, [rider for riders in self._ahead.values() for rider in riders],
                  between_calls=lambda: raise_if_cancelled(run.settings, run.hooks.cancel, step))
        return self._ahead.pop(step)


class _TensorState:
    """Named tensors as a module-like state for the engine's checkpoints (restored in place)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.tensors.items()}

    def load_state_dict(self, values: dict[str, torch.Tensor]) -> None:
        from ..errors import InputError

        missing = set(self.tensors) - set(values)
        if missing:
            raise InputError(f"the checkpoint lacks {len(missing)} trained tensors; it belongs to another run.")
        with torch.no_grad():
            for k, v in self.tensors.items():
                v.copy_(values[k])
