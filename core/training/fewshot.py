"""The few-shot training loop: a few images + a trigger word -> a Concept.

It reads top to bottom as nanoGPT's loop does: prepare images and captions, add the trigger token as a
patch of the model, choose what trains, then for each step draw a batch (a pure function of seed, step
and process, so a resumed run replays exactly), compute the objective (default: the denoising loss)
plus the pluggable loss terms; the engine steps the optimizer, reports progress, checkpoints, resumes
and honours Cancel. The model may carry concepts already (they stay frozen; `run.teacher()` is the model
as it was before the run). It is put back exactly as it was at the end, on Cancel and on errors; the
result is a Concept, applied with `apply_concept`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from PIL import Image

from ..concepts.concept import Concept, Trigger
from ..errors import InputError
from ..model import Model, PatchState, add_patch, patches_in_effect
from ..model.inference_mode import leave_inference_mode
from ..model.patches import class_word_vector, trigger_is_new, trigger_problem
from .data import DataSource, FewShotImages
from .engine import DEFAULT_PREVIEW_SHARE, PreviewBudget, ProgressFn, RunSettings, TrainingEngine, step_generator
from .images import prepare_images
from .losses import LossTerm
from .objective import Batch, DenoisingObjective
from .trainable import TrainableSet, build_trainable, trainable_kinds

if TYPE_CHECKING:
    from accelerate import Accelerator

log = logging.getLogger("conceptkit.training")

DEFAULT_TEMPLATES = ("a {trigger} {class}",)
MIXED_PRECISION = ("no", "fp16", "bf16")
TOKEN_INITS = ("class", "rare")


@dataclass
class TrainConfig:
    trigger: str
    class_word: str
    captions: list[str] | None = None  # one per image; "{trigger}" / "{class}" are filled in
    templates: tuple[str, ...] = DEFAULT_TEMPLATES  # used when there are no captions
    trainable: str = "lora"  # one of trainable_kinds(): embedding | lora | attention | full | registered ones
    rank: int = 4
    lora_alpha: float | None = None  # None: = rank
    train_text_encoder: bool = False
    train_token: bool = False  # also train the trigger's vector (always for "embedding", and with the text encoder)
    token_init: str = "class"  # "class": start from the class word's vector; "rare": a random vector of typical norm
    steps: int = 400
    learning_rate: float = 1e-3
    embedding_learning_rate: float = 5e-3
    batch_size: int = 4
    seed: int = 0
    augment_scale: float = 0.9
    flip: bool = False
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    checkpoint_every: int = 0  # 0: only when cancelled
    keep_checkpoints: int = 2
    method: str = "custom"
    parameters: dict = field(default_factory=dict)  # method-specific values recorded in the concept

    def signature(self) -> str:
        """What a checkpoint must agree on to be resumed (not the step count: a run may be extended)."""
        return settings_signature(self, ("steps", "checkpoint_every", "keep_checkpoints"))


@dataclass
class TrainResult:
    concept: Concept
    losses: list[float]
    resumed_from: int


def settings_signature(settings, exclude: tuple[str, ...] = ("checkpoint_every",)) -> str:
    """A short hash of a settings dataclass's values but `exclude`: what a run's checkpoints must agree on."""
    values = {k: v for k, v in dataclasses.asdict(settings).items() if k not in exclude}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Signed(Protocol):
    def signature(self) -> str: ...


def run_identity(images, config: Signed, base: str = "") -> str:
    """A name for a run's checkpoint folder that is the same for the same images, settings (anything with a
    `signature()`: a TrainConfig, a method's own settings) and base model (`base`: its fingerprint), so a crashed
    or cancelled run resumes when started again, and different otherwise."""
    pixels = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    digest = hashlib.sha256(pixels.detach().float().cpu().numpy().tobytes())
    digest.update(config.signature().encode())
    digest.update(base.encode())
    return digest.hexdigest()[:20]


def _check_config(model: Model, config: TrainConfig, own_trainable: bool = False) -> None:
    if not own_trainable and config.trainable not in trainable_kinds():
        raise InputError(f"trainable '{config.trainable}' is not one of {', '.join(trainable_kinds())}.")
    if config.mixed_precision not in MIXED_PRECISION:
        raise InputError(f"mixed_precision '{config.mixed_precision}' is not one of {', '.join(MIXED_PRECISION)}.")
    if config.token_init not in TOKEN_INITS:
        raise InputError(f"token_init '{config.token_init}' is not one of {', '.join(TOKEN_INITS)}.")
    if config.steps < 1 or config.batch_size < 1:
        raise InputError(f"steps and batch_size must be at least 1 (got {config.steps}, {config.batch_size}).")
    trigger = config.trigger.strip()
    if problem := trigger_problem(trigger):
        raise InputError(problem)
    for tokenizer in model.tokenizers:
        if not trigger_is_new(tokenizer, trigger):
            raise InputError(f"the trigger '{trigger}' is already a word of this model's vocabulary, so training "
                             f"would change what that word means; choose a new word such as '<{trigger}>'.")
    if not config.class_word.strip():
        raise InputError("the class word is empty; give the kind of thing the subject is (e.g. 'dog').")


def fill_template(template: str, trigger: str, class_word: str) -> str:
    return template.replace("{trigger}", trigger).replace("{class}", class_word)


def caption_lines(text: str) -> list[str]:
    """Captions written one per line (blank lines ignored)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def first_caption(config: TrainConfig) -> str:
    """The first training caption with its slots filled (what a preview draws)."""
    template = config.captions[0] if config.captions else config.templates[0]
    return fill_template(template, config.trigger, config.class_word)


def instance_captions(config: TrainConfig, count: int) -> list[str]:
    if config.captions:
        if len(config.captions) != count:
            raise InputError(f"{len(config.captions)} captions were given for {count} images; give one per image "
                             "or none.")
        captions = [fill_template(c, config.trigger, config.class_word) for c in config.captions]
    else:
        fill = {"trigger": config.trigger, "class": config.class_word}
        captions = [config.templates[i % len(config.templates)].format(**fill) for i in range(count)]
    for i, caption in enumerate(captions):
        if config.trigger not in caption.split():
            raise InputError(f"caption {i + 1} ('{caption}') does not contain the trigger '{config.trigger}'.")
    return captions


def class_captions(captions: list[str], trigger: str) -> list[str]:
    """The instance captions without the trigger: what the class looks like to the base model."""
    return [" ".join(w for w in c.split() if w != trigger) for c in captions]


def _token_init(model: Model, config: TrainConfig) -> list[torch.Tensor]:
    vectors = []
    for i, encoder in enumerate(model.text_encoders):
        table = encoder.get_input_embeddings().weight.detach().float().cpu()
        if config.token_init == "class":  # _check_config has made sure there is a class word
            vectors.append(class_word_vector(model, i, config.class_word).cpu())
        else:  # a rare token: a random direction with the table's typical norm
            gen = torch.Generator().manual_seed(int(hashlib.sha256(f"{config.trigger}/{i}".encode()).hexdigest()[:8],
                                                    16))
            direction = torch.randn(table.shape[1], generator=gen)
            vectors.append(direction / direction.norm() * table.norm(dim=1).mean())
    return vectors


@dataclass(frozen=True)
class TrainedToken:
    """The run's trigger token as a patch: its (trainable) vectors serve the new word while training."""

    trigger: str
    vectors: tuple[torch.Tensor, ...]

    @property
    def triggers(self) -> tuple[str, ...]:
        return (self.trigger,)

    def enter(self, model: Model, state: PatchState) -> None:
        state.add_token(self.trigger, list(self.vectors), [None] * len(self.vectors))


class TrainingRun:
    """One run's state, shared with the objective and the loss terms. `model` is the model as it trains: its
    patches (the concepts it carried, the run's token) are in effect while the run lasts."""

    def __init__(self, model: Model, config: TrainConfig, accelerator: Accelerator, trainable: TrainableSet,
                 objective=None):
        from diffusers import DDPMScheduler

        self.config, self.accelerator, self.trainable = config, accelerator, trainable
        self.model = model
        self.noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
        self.objective = objective or DenoisingObjective()
        self.token_state: PatchState | None = None  # the run's trigger token while the run lasts

    def serving_token(self, vectors: list[torch.Tensor]):
        """Serve `vectors` ([B, dim] each: one per prompt) for the run's trigger for the block (an objective whose
        token vector is computed per sample, as an image encoder's)."""
        return self.token_state.serving(self.config.trigger, vectors)

    def denoising_loss(self, images: torch.Tensor, captions: list[str], generator: torch.Generator) -> torch.Tensor:
        """The plain diffusion loss on images [B, 3, H, W] in -1..1 with their captions (prior preservation)."""
        return DenoisingObjective()(self, Batch(images, captions), generator)

    @contextmanager
    def teacher(self):
        """The model as it was before the run (with the concepts it carried), for the block; no gradients."""
        with torch.no_grad(), self.trainable.disabled():
            yield self.model


class StepLoss(torch.nn.Module):
    """One step's loss: the objective on the data source's batch plus the loss terms. A module, so that
    `accelerator.prepare` can wrap it (DDP averages the trained parameters' gradients across processes)."""

    def __init__(self, run: TrainingRun, data: DataSource, loss_terms: list[LossTerm]):
        super().__init__()
        self.run, self.data, self.loss_terms = run, data, loss_terms
        self.unet = run.model.unet
        self.text_encoders = torch.nn.ModuleList(run.model.text_encoders)
        self.token = torch.nn.ParameterList(run.trainable.token_parameters())
        self.trained = torch.nn.ModuleList(run.trainable.modules())

    def forward(self, step: int) -> torch.Tensor:
        run = self.run
        gen = step_generator(run.config.seed, step, run.accelerator.process_index)
        batch = self.data.batch(step, run.config.batch_size, gen)
        loss = run.objective(run, batch, gen)
        for term in self.loss_terms:
            loss = loss + term(run, step, gen)
        return loss


def train_concept(
    model: Model,
    images,
    config: TrainConfig,
    loss_terms: list[LossTerm] = (),
    *,
    name: str = "concept",
    objective=None,
    data: DataSource | None = None,
    checkpoint_dir: Path | None = None,
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
    preview: Callable[[Model], Image.Image] | None = None,
    preview_share: float = DEFAULT_PREVIEW_SHARE,
    on_finished: Callable[[TrainResult], None] | None = None,
    trainable: Callable[[Model, list[torch.Tensor]], TrainableSet] | None = None,
) -> TrainResult:
    """Learn a concept. With `checkpoint_dir`, a run resumes from its newest checkpoint (same settings).
    `progress(step, total, preview)` is called every step; `preview()` renders `preview(model)` of the concept
    so far when the PreviewBudget allows (previews cost at most `preview_share` of the training; `preview.passes`
    says what one costs) and gives None in between. `data` replaces the images as the source of batches (a
    stream); `objective` replaces the denoising loss; `trainable(model, token_init)` builds a method's own
    trainable set in place of `config.trainable`'s (which then only names it). A finished run calls
    `on_finished(result)` before it removes its checkpoints (a caller that keeps the result on disk loses nothing
    if that fails)."""
    # ComfyUI runs nodes under torch.inference_mode(); training needs autograd, and weights created in
    # inference mode cannot take part in it, so they are replaced by ordinary copies (same values) first.
    with torch.inference_mode(False), torch.enable_grad():
        leave_inference_mode(model)
        return _train(model, images, config, list(loss_terms), name, objective, data, checkpoint_dir, progress,
                      cancel, preview, preview_share, on_finished, trainable)


def _train(model, images, config, loss_terms, name, objective, data, checkpoint_dir, progress, cancel, preview,
           preview_share, on_finished, own_trainable) -> TrainResult:
    budget = PreviewBudget.for_training(preview_share, getattr(preview, "passes", 0), config.batch_size)
    _check_config(model, config, own_trainable is not None)
    base_fingerprint = model.fingerprint()  # of the weights before a full fine-tune changes them in place
    if data is None:
        pixels = prepare_images(images, model.default_size)
        data = FewShotImages(pixels, instance_captions(config, len(pixels)), config.augment_scale, config.flip)
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=model.device.type == "cpu")
    engine = TrainingEngine(RunSettings(config.steps, checkpoint_dir, config.checkpoint_every,
                                        config.keep_checkpoints, signature=config.signature(), name=name),
                            accelerator, progress=progress, cancel=cancel)
    alpha = float(config.lora_alpha or config.rank)
    token_init = _token_init(model, config)
    with patches_in_effect(model):  # concepts the model carries are in effect, and frozen
        if own_trainable is not None:
            trainable = own_trainable(model, token_init)
        else:
            trainable = build_trainable(model, config.trainable, token_init,
                                        train_token=config.trainable == "embedding" or config.train_token
                                        or config.train_text_encoder,
                                        train_text_encoder=config.train_text_encoder, rank=config.rank, alpha=alpha,
                                        seed=config.seed)
        unet_mode, checkpointing = model.unet.training, model.unet.is_gradient_checkpointing
        try:
            with_token = add_patch(model, TrainedToken(config.trigger, tuple(trainable.token)))
            run = TrainingRun(dataclasses.replace(with_token, patches=()), config, accelerator, trainable, objective)
            groups = [{"params": trainable.weight_parameters(), "lr": config.learning_rate},
                      {"params": trainable.token_parameters(), "lr": config.embedding_learning_rate}]
            optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)
            if config.gradient_checkpointing:
                model.unet.enable_gradient_checkpointing()
            step_loss, optimizer = engine.prepare(StepLoss(run, data, loss_terms), optimizer)
            with patches_in_effect(dataclasses.replace(with_token, patches=with_token.patches[-1:])) as token_state:
                run.token_state = token_state
                model.unet.train(config.trainable != "embedding")
                outcome = engine.run(step_loss, optimizer, {"trainable": _TensorState(trainable.state())},
                                     preview_at=lambda step: _preview_fn(run, preview if budget.due(step) else None))
            concept = Concept(name=name, method=config.method, family=model.family,
                              base_fingerprint=base_fingerprint, triggers=(Trigger(config.trigger, config.class_word),),
                              tensors=trainable.concept_tensors(),
                              lora_rank=config.rank if config.trainable == "lora" else 0,
                              lora_alpha=alpha if config.trainable == "lora" else 0.0,
                              parameters={"steps": config.steps, "learning_rate": config.learning_rate,
                                          "trainable": config.trainable, "batch_size": config.batch_size,
                                          "seed": config.seed, "images": len(getattr(data, "pixels", ())),
                                          **config.parameters})
            if outcome.finished:
                if on_finished is not None:  # e.g. keep the result on disk before the checkpoints go
                    on_finished(TrainResult(concept, outcome.losses, outcome.resumed_from))
                engine.remove_checkpoints()
        finally:
            trainable.restore()
            model.unet.train(unet_mode)
            if config.gradient_checkpointing and not checkpointing:
                model.unet.disable_gradient_checkpointing()
    return TrainResult(concept, outcome.losses, outcome.resumed_from)


def _preview_fn(run: TrainingRun, preview: Callable[[Model], Image.Image] | None):
    """A lazy preview of the concept as it is now (rendered only if the progress display asks for it)."""
    if preview is None:
        return lambda: None

    def render():
        was_training = run.model.unet.training
        run.model.unet.eval()
        try:
            with torch.no_grad():
                return preview(run.model)
        finally:
            run.model.unet.train(was_training)

    return render


class _TensorState:
    """Named tensors as a module-like state for the engine's checkpoints (restored in place)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.tensors.items()}

    def load_state_dict(self, values: dict[str, torch.Tensor]) -> None:
        missing = set(self.tensors) - set(values)
        if missing:
            raise InputError(f"the checkpoint lacks {len(missing)} trained tensors; it belongs to another run.")
        with torch.no_grad():
            for k, v in self.tensors.items():
                v.copy_(values[k])
