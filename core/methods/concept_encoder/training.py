"""E4T's two training phases, each a training run (METHODS.md §1):

- domain pre-training (`pretrain_encoder`): a stream of domain batches whose captions name the placeholder word
  S*; the encoder reads a condition image and the current noisy latent, its e* is served as each prompt's own
  vector for S*, and the loss ||eps - eps(x_t, c(e*); theta + dW)||^2 + lambda_e ||E||^2 trains the encoder and
  the attention offsets;
- per-concept tuning (`tune_concept`): the same loss for a few steps on augmentations of ONE image, from
  the pre-trained encoder and offsets, with the user's trigger as S*; the result is a concept.
Both get the run's resume, Cancel, progress and accelerate.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ...concepts import Concept, Trigger
from ...errors import InputError
from ...model import Conditioning, Model, encode_prompts
from ...model.image_features import ImageBackbone
from ...model.patches import class_word_vector, trigger_problem
from ...training import (
    DEFAULT_PREVIEW_SHARE,
    Batch,
    DenoisingObjective,
    FewShotImages,
    RunHooks,
    RunOutcome,
    RunSettings,
    StepSettings,
    Stream,
    TrainableSet,
    TrainingRun,
    check_trigger,
    prepare_images,
    settings_signature,
    token_and_weight_optimizer,
    training_mode,
)
from ...training.trainable import DeltaSet
from .domain import world_domain
from .encoder import (
    DEFAULT_ENCODER_WEIGHT,
    AttentionOffsets,
    ConceptEncoder,
    empty_prompt_features,
    encoder_penalty,
    placeholder_vectors,
)
from .files import GROUP, Pretrained, concept_group_tensors, step_averaged_vectors

log = logging.getLogger("conceptkit.concept_encoder")

PRETRAIN_TRIGGER = "<e4t-domain>"  # S*, the placeholder word of the domain captions


class EncoderSet(TrainableSet):
    """What E4T trains: the encoder and the attention offsets (the trigger's vector is computed, not learned), and
    in per-concept tuning, where asked, the UNet's attention weights or all its weights (`TUNED_WEIGHTS`)."""

    kind = "e4t"

    def __init__(self, model: Model, token_init: list[torch.Tensor], encoder: ConceptEncoder,
                 offsets: AttentionOffsets, weights: str = "offsets"):
        super().__init__(model, token_init, train_token=False, train_text_encoder=False)
        self.encoder, self.attention = encoder.train(), offsets
        for p in [*encoder.parameters(), *offsets.parameters()]:
            p.requires_grad_(True)
        self.unet = DeltaSet(model, token_init, False, False, weights) if weights != "offsets" else None
        self._handles = offsets.attach(model)

    def weight_parameters(self):
        return [*self.encoder.parameters(), *self.attention.parameters(),
                *(self.unet.weight_parameters() if self.unet else [])]

    def modules(self):
        return [self.encoder, self.attention]

    def state(self):
        named = {f"encoder.{n}": p for n, p in self.encoder.named_parameters()}
        named |= {f"offsets.{n}": p for n, p in self.attention.named_parameters()}
        named |= {f"delta.{n}": p for n, p in (self.unet.params.items() if self.unet else ())}
        return {**super().state(), **named}

    def concept_tensors(self):
        return {}  # the caller builds the concept (it needs the image's features), see tune_concept

    def tuned_deltas(self) -> dict[str, torch.Tensor]:
        """'unet.<module>.weight' -> what the run changed in that weight, as one offset from the base: the tuned
        weight times (1 + the offsets), minus the base. Call it while the tuned weights are in place."""
        deltas = self.attention.dense(self.model)
        for name, p in (self.unet.params.items() if self.unet else ()):
            changed = p.detach() - self.unet.base[name]
            deltas[name] = deltas[name] + changed if name in deltas else changed.clone()
        return deltas

    @contextmanager
    def _weights_disabled(self):
        self.attention.enabled = False
        try:
            with self.unet.disabled() if self.unet else nullcontext():
                yield
        finally:
            self.attention.enabled = True

    def restore(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.unet:
            self.unet.restore()


@dataclass
class EncoderObjective(DenoisingObjective):
    """The denoising loss with the trigger's vector e* = e_class + s E(image, x_t) per sample, plus lambda_e ||E||^2.
    The image features are fixed (`image_features`, tuning on one image) or read from each batch's
    `extra["condition"]` images (pre-training)."""

    encoder: ConceptEncoder = None
    backbone: ImageBackbone = None
    class_vectors: list[torch.Tensor] = field(default_factory=list)
    image_features: torch.Tensor | None = None
    weight: float = DEFAULT_ENCODER_WEIGHT
    shares_pass = False  # its prediction serves per-sample vectors for its own batch
    _empty: Conditioning | None = None

    def __call__(self, run, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        model = run.model
        noised = self.noising(run, batch, generator)
        n = len(batch.captions)
        if self.image_features is not None:
            features = self.image_features.expand(n, *self.image_features.shape[1:])
        else:
            features = self.backbone.features(batch.extra["condition"])
        if self._empty is None:
            self._empty = encode_prompts(model, [""])
        empty = Conditioning(self._empty.hidden.expand(n, -1, -1),
                             None if self._empty.pooled is None else self._empty.pooled.expand(n, -1))
        unet_features = empty_prompt_features(model, noised.noisy, noised.timesteps, empty)
        offsets = self.encoder(features.to(model.device), unet_features)
        vectors = placeholder_vectors(offsets, self.class_vectors, self.encoder.spec.scale)
        with run.serving_token(vectors):
            prediction = self.prediction(run, noised, batch.captions, batch)
        return F.mse_loss(prediction.float(), noised.target.float()) + self.weight * encoder_penalty(offsets)


def class_vectors(model: Model, class_word: str) -> list[torch.Tensor]:
    vectors = [class_word_vector(model, i, class_word) for i in range(len(model.text_encoders))]
    if any(v is None for v in vectors):
        raise InputError(f"the class word '{class_word}' gives no tokens; give the domain's class word, e.g. 'cat'.")
    return [v.to(model.device) for v in vectors]


WORLD_ENCODER_WEIGHT = 1e-5  # lambda_e on the world. The world's creatures are reached through points 0.87 from
# the class word's vector (named creatures' words, norm 0.26; ordinary words 0.4-1.0): with s = 0.1 that is
# ||E|| ~ 9, where the paper's 0.01 (or 1e-3) costs 3-40x the denoising loss (about 0.03) and holds e* at the class
# word; at 1e-5 it costs about 3% of it. 300 steps of pre-training: the wrong-image gap 0.0050 +- 0.0006 at 1e-5,
# 0.0025 at 1e-4, 0.0005 at 1e-3 (docs/benchmarks.md, encoder)


@dataclass
class PretrainSettings:
    steps: int = 6000
    batch_size: int = 16
    learning_rate: float = 2e-4
    seed: int = 0
    checkpoint_every: int = 200
    encoder_weight: float = WORLD_ENCODER_WEIGHT

    def signature(self, start: Pretrained) -> str:
        """What a checkpoint must agree on to be resumed: these settings (not the step count: a run may be
        extended) and where the run started."""
        return settings_signature(self, ("steps", "checkpoint_every")) + f"/{start.class_word}/{start.steps}"


def pretrain_encoder(model: Model, backbone: ImageBackbone, pretrained: Pretrained, settings: PretrainSettings,
                     data: Stream | None = None, *, checkpoint_dir: Path | None = None, progress=None, cancel=None,
                     preview=None, preview_share: float = DEFAULT_PREVIEW_SHARE,
                     snapshot: Callable[[int, Pretrained], None] | None = None, snapshot_every: int = 0,
                     on_finished: Callable[[Pretrained], None] | None = None) -> tuple[Pretrained, RunOutcome]:
    """Train `pretrained` (a fresh or partly trained encoder + offsets) on a domain: `data` gives batches whose
    captions name PRETRAIN_TRIGGER and whose `extra["condition"]` holds the image the encoder reads (default:
    the world's creature domain). `snapshot(step, encoder so far)` is called every `snapshot_every` steps;
    `on_finished(encoder)` when the run finished, before its checkpoints are removed (a caller that keeps it
    loses nothing). Returns the trained encoder and the run's outcome (losses)."""
    data = data or Stream(world_domain(PRETRAIN_TRIGGER))
    with training_mode(model):
        encoder, offsets = copy.deepcopy(pretrained.encoder), copy.deepcopy(pretrained.offsets)

        def so_far(step: int) -> Pretrained:
            return Pretrained(encoder, offsets, pretrained.class_word, pretrained.backbone, model.family,
                              model.fingerprint(), pretrained.steps + step, pretrained.offset_rank)

        def report(step, total, preview):
            if snapshot is not None and snapshot_every and step % snapshot_every == 0 and step < total:
                snapshot(step, so_far(step))
            if progress is not None:
                progress(step, total, preview)

        vectors = class_vectors(model, pretrained.class_word)
        run = TrainingRun(
            model, lambda m: EncoderSet(m, vectors, encoder, offsets), data,
            RunSettings(settings.steps, checkpoint_dir, settings.checkpoint_every,
                        signature=settings.signature(pretrained), name="encoder"),
            StepSettings(settings.batch_size, settings.seed),
            optimizer=lambda t: token_and_weight_optimizer(t, settings.learning_rate, settings.learning_rate),
            objective=EncoderObjective(encoder=encoder, backbone=backbone, class_vectors=vectors,
                                       weight=settings.encoder_weight),
            token=PRETRAIN_TRIGGER,
            hooks=RunHooks(progress=report, cancel=cancel, preview=preview, preview_share=preview_share,
                           on_finished=None if on_finished is None else lambda _: on_finished(so_far(settings.steps))))
        outcome = run.train(lambda trainable, outcome: outcome)
        encoder.eval().requires_grad_(False)
        offsets.requires_grad_(False)
    return so_far(settings.steps), outcome


DEFAULT_TUNING_STEPS = 15  # the paper's 5-15 steps at batch 16, its high end (at 5 the likeness is lower: METHODS docs)
# what per-concept tuning trains beside the encoder: the attention offsets alone, or with the UNet's attention
# weights, or with all its weights (METHODS.md: the UNet's attention weights optionally)
TUNED_WEIGHTS = ("offsets", "attention", "full")


@dataclass
class TuneSettings:
    steps: int = DEFAULT_TUNING_STEPS
    batch_size: int = 16
    # chosen on calibration creatures 30-33 (no bench's) at 15 steps of every UNet weight, seeds 0-1: likeness 0.44
    # at 1e-4, 0.56 at 3e-4, 0.58 at 6e-4 (text fidelity slipping), 0.53 at 1e-3 (0.94 text)
    learning_rate: float = 3e-4
    seed: int = 0
    encoder_weight: float = WORLD_ENCODER_WEIGHT
    weights: str = "full"  # one of TUNED_WEIGHTS
    # what the image shows, "{trigger}" where the subject is ("a {trigger} on the left, blue background"): the
    # tuning caption, without crops (they would move what it says); empty: "a {trigger}" on random crops
    caption: str = ""


def tuning_images(pixels: torch.Tensor, trigger: str, caption: str) -> FewShotImages:
    """The one image with its tuning caption: the given one (the trigger in the class word's place), uncropped, or
    "a {trigger}" on random crops (it says no place for a crop to contradict)."""
    if not caption.strip():
        return FewShotImages(pixels, [f"a {trigger}"], augment_scale=0.9)
    if "{trigger}" not in caption:
        raise InputError(f"the caption '{caption}' does not say where the subject is; write {{trigger}} for it, e.g. "
                         "'a {trigger} on the left, blue background'.")
    return FewShotImages(pixels, [caption.strip().replace("{trigger}", trigger)])


def tune_concept(model: Model, pretrained: Pretrained, backbone: ImageBackbone, image: torch.Tensor, trigger: str,
                 settings: TuneSettings, *, name: str = "concept", progress=None, cancel=None,
                 preview=None) -> Concept:
    """A concept from ONE image [1, 3, H, W] in -1..1 (the model's size): the pre-trained encoder and offsets
    (and `settings.weights`) tuned for `settings.steps` steps on augmentations of it (0 steps: the encoder as
    pre-trained)."""
    if settings.weights not in TUNED_WEIGHTS:
        raise InputError(f"weights '{settings.weights}' is not one of {', '.join(TUNED_WEIGHTS)}.")
    pretrained.check_fits(model, backbone)
    if problem := trigger_problem(trigger.strip()):  # a word it can be (a new one, when tuning: below)
        raise InputError(problem)
    with torch.inference_mode(False):  # ComfyUI runs nodes in inference mode; what trains must be ordinary tensors
        features = backbone.features(image.to(model.device)).clone()
        encoder, offsets = copy.deepcopy(pretrained.encoder), copy.deepcopy(pretrained.offsets)
    class_word = pretrained.class_word
    vectors = class_vectors(model, class_word)
    deltas = {}
    if settings.steps > 0:
        check_trigger(model, trigger)
        with training_mode(model):
            pixels = prepare_images(image.permute(0, 2, 3, 1).add(1).div(2), model.default_size)
            run = TrainingRun(
                model, lambda m: EncoderSet(m, vectors, encoder, offsets, settings.weights),
                tuning_images(pixels, trigger, settings.caption),
                RunSettings(settings.steps, name=name), StepSettings(settings.batch_size, settings.seed),
                optimizer=lambda t: token_and_weight_optimizer(t, settings.learning_rate, settings.learning_rate),
                objective=EncoderObjective(encoder=encoder, backbone=backbone, class_vectors=vectors,
                                           image_features=features, weight=settings.encoder_weight),
                token=trigger, hooks=RunHooks(progress=progress, cancel=cancel, preview=preview))
            run.train(lambda trainable, outcome: deltas.update(trainable.tuned_deltas()))
    encoder.eval()
    deltas = deltas or offsets.dense(model)
    tensors = concept_group_tensors(encoder, deltas, features, vectors)
    averaged = step_averaged_vectors(model, encoder, deltas, features, vectors, image)
    tensors |= {f"embedding.0.te{i}": v[None].detach().clone() for i, v in enumerate(averaged)}
    return Concept(name=name, method="e4t", family=model.family, base_fingerprint=model.fingerprint(),
                   triggers=(Trigger(trigger, class_word),), tensors=tensors,
                   parameters={"tuning_steps": settings.steps, "batch_size": settings.batch_size,
                               "learning_rate": settings.learning_rate, "seed": settings.seed,
                               "weights": settings.weights, "caption": settings.caption,
                               "encoder_steps": pretrained.steps,
                               GROUP: pretrained.description()})
