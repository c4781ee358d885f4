"""Learning a personal concept, the recipe most trainings share: a few images + a trigger word -> a Concept.

It reads top to bottom as DreamBooth and textual inversion do: prepare the images and their captions, give the
trigger a starting vector (the class word's, or a rare random one), choose what trains (the trigger's vector,
LoRA, attention weights, the full UNet), and train a run (`TrainingRun`) on the denoising loss plus the recipe's
loss terms. The model may carry concepts already (they stay frozen; `run.teacher()` is the model as it was before
the run). The result is a Concept, applied with `apply_concept`. Several subjects may learn in one run
(`TrainConfig.companions`): one concept with every subject's trigger.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..concepts.concept import Concept, Trigger
from ..concepts.files import load_concept, save_concept
from ..errors import InputError
from ..model import Model
from ..model.patches import class_word_vector, trigger_is_new, trigger_problem
from .data import FewShotImages
from .engine import DEFAULT_PREVIEW_SHARE, ProgressFn, RunOutcome, RunSettings
from .images import prepare_images
from .losses import LossTerm
from .run import MIXED_PRECISION, RunFolder, RunHooks, StepSettings, TrainingRun, training_mode
from .trainable import TrainableSet, build_trainable, trainable_kinds

log = logging.getLogger("conceptkit.training")

DEFAULT_TEMPLATES = ("a {trigger}",)
TOKEN_INITS = ("auto", "class", "rare")


@dataclass(frozen=True)
class Companion:
    """Another subject learned in the same run (a joint run, as multi-concept DreamBooth trains several subjects
    in one): its trigger, its class word and one caption per image ("{trigger}" where it is named); its images
    follow those of the subjects before it. Trained together, one set of weights has to tell the subjects apart,
    which offsets trained apart and merged do not."""

    trigger: str
    class_word: str
    captions: tuple[str, ...]


@dataclass
class TrainConfig:
    trigger: str
    class_word: str
    captions: list[str] | None = None  # one per image; "{trigger}" / "{class}" are filled in
    templates: tuple[str, ...] = DEFAULT_TEMPLATES  # used when there are no captions
    trainable: str = "lora"  # one of trainable_kinds(): embedding | lora | attention | full
    rank: int = 4
    lora_alpha: float | None = None  # None: = rank
    train_text_encoder: bool = False
    train_token: bool = False  # also train the trigger's vector (always for "embedding", and with the text encoder)
    # "class": the trigger starts at the class word's vector and takes its place in captions ("a <s> on the
    # left"); "rare": a random vector of typical norm beside the class word ("a <s> dog"); "auto": "class" when
    # the trigger's vector trains, "rare" when it stays fixed (a fixed copy of the class word would duplicate it)
    token_init: str = "auto"
    steps: int = 400
    learning_rate: float = 1e-3
    embedding_learning_rate: float = 5e-3
    batch_size: int = 4
    seed: int = 0
    augment_scale: float = 1.0  # < 1: random zoom-in crops down to this share of the side (moves the subject)
    flip: bool = False  # random mirror (contradicts "left"/"right" in captions)
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    checkpoint_every: int = 0  # 0: only when cancelled
    keep_checkpoints: int = 2
    method: str = "custom"
    parameters: dict = field(default_factory=dict)  # method-specific values recorded in the concept
    companions: tuple[Companion, ...] = ()  # more subjects learned in the same run (their images follow)

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


def _check_config(model: Model, config: TrainConfig) -> None:
    if config.trainable not in trainable_kinds():
        raise InputError(f"trainable '{config.trainable}' is not one of {', '.join(trainable_kinds())}.")
    if config.mixed_precision not in MIXED_PRECISION:
        raise InputError(f"mixed_precision '{config.mixed_precision}' is not one of {', '.join(MIXED_PRECISION)}.")
    if config.token_init not in TOKEN_INITS:
        raise InputError(f"token_init '{config.token_init}' is not one of {', '.join(TOKEN_INITS)}.")
    if not 0 < config.augment_scale <= 1:
        raise InputError(f"augment_scale must be in (0, 1] (got {config.augment_scale}); 1 turns crops off.")
    if config.steps < 1 or config.batch_size < 1:
        raise InputError(f"steps and batch_size must be at least 1 (got {config.steps}, {config.batch_size}).")
    subjects = subject_configs(config)
    triggers = [subject.trigger for subject in subjects]
    if len(set(triggers)) < len(triggers):
        raise InputError(f"the subjects of one run share a trigger ({', '.join(triggers)}); give each its own word.")
    for subject in subjects:
        check_trigger(model, subject.trigger)
        if not subject.class_word.strip():
            raise InputError(f"the class word of '{subject.trigger}' is empty; give the kind of thing the subject is "
                             "(e.g. 'dog').")


def subject_configs(config: TrainConfig) -> list[TrainConfig]:
    """The run's subjects, each as a config of its own: the run's (trigger, class word, captions), then each
    companion's with the run's other settings."""
    alone = dataclasses.replace(config, companions=())
    return [alone] + [dataclasses.replace(alone, trigger=c.trigger, class_word=c.class_word, captions=list(c.captions))
                      for c in config.companions]


def check_trigger(model: Model, trigger: str) -> None:
    """A trigger is one new word: not one of the model's vocabulary (training would change what it means)."""
    trigger = trigger.strip()
    if problem := trigger_problem(trigger):
        raise InputError(problem)
    for tokenizer in model.tokenizers:
        if not trigger_is_new(tokenizer, trigger):
            raise InputError(f"the trigger '{trigger}' is already a word of this model's vocabulary, so training "
                             f"would change what that word means; choose a new word such as '<{trigger}>'.")


def trains_token(config: TrainConfig) -> bool:
    return config.trainable == "embedding" or config.train_token or config.train_text_encoder


def token_start(config: TrainConfig) -> str:
    """Where the trigger's vector starts: "class" or "rare" ("auto" resolved, see TrainConfig.token_init)."""
    if config.token_init != "auto":
        return config.token_init
    return "class" if trains_token(config) else "rare"


def identifier(config: TrainConfig) -> str:
    """The words that name the subject in captions, one rule for every recipe: the trigger alone where it starts
    at the class word's vector (it replaces the class word), else the trigger beside the class word."""
    return config.trigger if token_start(config) == "class" else f"{config.trigger} {config.class_word}"


def fill_template(template: str, config: TrainConfig) -> str:
    """A caption with its slots filled: "{trigger}" (or "{trigger} {class}") is the subject's identifier,
    a "{class}" elsewhere the class word."""
    return (template.replace("{trigger} {class}", "{trigger}").replace("{trigger}", identifier(config))
            .replace("{class}", config.class_word))


def caption_lines(text: str) -> list[str]:
    """Captions written one per line (blank lines ignored)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def first_caption(config: TrainConfig) -> str:
    """The first training caption with its slots filled (what a preview draws)."""
    template = config.captions[0] if config.captions else config.templates[0]
    return fill_template(template, config)


def instance_captions(config: TrainConfig, count: int) -> list[str]:
    """One caption per image with its slots filled (the companions' images last, with their own captions)."""
    if config.companions:
        theirs = [len(c.captions) for c in config.companions]
        own = count - sum(theirs)
        if own < 1:
            raise InputError(f"{count} images were given for {len(theirs) + 1} subjects whose companions have "
                             f"{sum(theirs)} captions; give the run's own subject's images first, then each "
                             "companion's, one caption per image.")
        return [caption for subject, n in zip(subject_configs(config), [own, *theirs], strict=True)
                for caption in instance_captions(subject, n)]
    if config.captions:
        if len(config.captions) != count:
            raise InputError(f"{len(config.captions)} captions were given for {count} images; give one per image "
                             "or none.")
        captions = [fill_template(c, config) for c in config.captions]
    else:
        captions = [fill_template(config.templates[i % len(config.templates)], config) for i in range(count)]
    named = trigger_pattern(config.trigger)
    for i, caption in enumerate(captions):
        if not named.search(caption):
            raise InputError(f"caption {i + 1} ('{caption}') does not contain the trigger '{config.trigger}'.")
    _check_augmentation(config, captions)
    return captions


MIRRORED_WORDS = {"left", "right"}
PLACE_WORDS = MIRRORED_WORDS | {"top", "bottom", "centre", "center", "middle", "corner"}


def _check_augmentation(config: TrainConfig, captions: list[str]) -> None:
    """Crops move the subject and mirrors swap its sides: where captions say where the subject is, either
    teaches the model against its words (a warning: no node offers augmentation; a script asked for it)."""
    contradicted = PLACE_WORDS if config.augment_scale < 1 else MIRRORED_WORDS if config.flip else set()
    said = [(i, c, sorted(set(c.lower().replace(",", " ").split()) & contradicted)) for i, c in enumerate(captions)]
    said = [s for s in said if s[2]]
    if said:
        index, caption, words = said[0]
        kind = "random crops (augment_scale < 1)" if config.augment_scale < 1 else "mirroring (flip)"
        log.warning("%d of %d captions say where the subject is, which %s contradict (caption %d: '%s' says %s); "
                    "turn the augmentation off or leave the place out of the captions.", len(said), len(captions),
                    kind, index + 1, caption, ", ".join(words))


def trigger_pattern(trigger: str) -> re.Pattern:
    """The trigger as a word of a caption: between spaces or beside punctuation ("a <s>, smiling")."""
    return re.compile(rf"(?<![^\s(\[\"']){re.escape(trigger)}(?![^\s,.;:!?)\]\"'])")


def class_captions(captions: list[str], config: TrainConfig) -> list[str]:
    """The instance captions with the class word for the identifier: what the class looks like to the base
    model."""
    for subject in subject_configs(config):
        name, named = identifier(subject), trigger_pattern(subject.trigger)
        captions = [named.sub(subject.class_word, c.replace(name, subject.trigger)) for c in captions]
    return captions


def _token_init(model: Model, config: TrainConfig) -> list[torch.Tensor]:
    """Where the trigger's vectors start, one per text encoder."""
    vectors = []
    for i, encoder in enumerate(model.text_encoders):
        table = encoder.get_input_embeddings().weight.detach().float().cpu()
        if token_start(config) == "class":  # _check_config has made sure there is a class word
            vectors.append(class_word_vector(model, i, config.class_word).cpu())
        else:  # a rare token: a random direction with the table's typical norm
            gen = torch.Generator().manual_seed(int(hashlib.sha256(f"{config.trigger}/{i}".encode()).hexdigest()[:8],
                                                    16))
            direction = torch.randn(table.shape[1], generator=gen)
            vectors.append(direction / direction.norm() * table.norm(dim=1).mean())
    return vectors


def train_concept(
    model: Model,
    images,
    config: TrainConfig,
    loss_terms: list[LossTerm] = (),
    *,
    name: str = "concept",
    checkpoint_dir: Path | None = None,
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
    preview: Callable[[Model], Image.Image] | None = None,
    preview_share: float = DEFAULT_PREVIEW_SHARE,
    on_finished: Callable[[TrainResult], None] | None = None,
) -> TrainResult:
    """Learn a concept from `images`. With `checkpoint_dir`, a run resumes from its newest checkpoint (same
    settings). `progress`, `cancel`, `preview`, `preview_share` and `on_finished` are the run's hooks (RunHooks)."""
    with training_mode(model):
        _check_config(model, config)
        base_fingerprint = model.fingerprint()  # of the weights before a full fine-tune changes them in place
        pixels = prepare_images(images, model.default_size)
        data = FewShotImages(pixels, instance_captions(config, len(pixels)), config.augment_scale, config.flip)
        alpha = float(config.lora_alpha or config.rank)
        subjects = subject_configs(config)
        token_init, *companion_inits = [_token_init(model, subject) for subject in subjects]
        lora = config.trainable == "lora"

        def concept_of(trainable: TrainableSet, outcome: RunOutcome) -> TrainResult:
            concept = Concept(name=name, method=config.method, family=model.family, base_fingerprint=base_fingerprint,
                              triggers=tuple(Trigger(s.trigger, s.class_word) for s in subjects),
                              tensors=trainable.concept_tensors(), lora_rank=config.rank if lora else 0,
                              lora_alpha=alpha if lora else 0.0,
                              parameters={"steps": config.steps, "learning_rate": config.learning_rate,
                                          "trainable": config.trainable, "batch_size": config.batch_size,
                                          "seed": config.seed, "images": len(pixels),
                                          "token_start": token_start(config), **config.parameters})
            return TrainResult(concept, outcome.losses, outcome.resumed_from)

        train_token = trains_token(config)
        run = TrainingRun(
            model,
            lambda carrying: build_trainable(carrying, config.trainable, token_init, train_token=train_token,
                                             train_text_encoder=config.train_text_encoder, rank=config.rank,
                                             alpha=alpha, seed=config.seed, companion_inits=companion_inits),
            data,
            RunSettings(config.steps, checkpoint_dir, config.checkpoint_every, config.keep_checkpoints,
                        signature=config.signature(), name=name),
            StepSettings(config.batch_size, config.seed, config.mixed_precision, config.gradient_checkpointing),
            optimizer=lambda t: token_and_weight_optimizer(t, config.learning_rate, config.embedding_learning_rate),
            loss_terms=list(loss_terms), token=config.trigger,
            companions=tuple(c.trigger for c in config.companions), train_unet_mode=config.trainable != "embedding",
            hooks=RunHooks(progress, cancel, preview, preview_share, on_finished))
        return run.train(concept_of)


def token_and_weight_optimizer(trainable: TrainableSet, learning_rate: float, embedding_learning_rate: float
                               ) -> torch.optim.Optimizer:
    """AdamW with the trained weights at `learning_rate` and the token's vectors at `embedding_learning_rate`."""
    groups = [{"params": trainable.weight_parameters(), "lr": learning_rate},
              {"params": trainable.token_parameters(), "lr": embedding_learning_rate}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)


def keep_result(folder: RunFolder, result: TrainResult) -> None:
    """Keep a finished run's concept (and its losses) in its folder until it is saved (RunFolder.keep)."""
    concept = dataclasses.replace(result.concept, parameters={**result.concept.parameters, "losses": result.losses})
    folder.keep(lambda path: save_concept(concept, path, "overwrite"))


def kept_result(folder: RunFolder, steps: int) -> TrainResult | None:
    """The kept result of this run, if it finished with `steps` steps (more steps asked: it trains again)."""
    concept = folder.kept(load_concept)
    if concept is None or concept.parameters.get("steps") != steps:
        return None
    log.info("%s: this run finished before; its result is kept in %s", concept.name, folder.result_file)
    return TrainResult(concept, list(concept.parameters.get("losses", [])), concept.parameters.get("steps", 0))
