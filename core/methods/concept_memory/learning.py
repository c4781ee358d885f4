"""Learning concepts one after another into a memory (METHODS.md §5; Sun et al., TPAMI 2024).

Task k trains a new LoRA and the new trigger on top of the memory so far (the consolidated weights applied,
frozen), with two loss terms beside the denoising loss on the new images:
- task-aware memory enhancement: the denoising loss on the bank's generated samples of earlier concepts
  (replay), weight `replay_weight` (mu);
- elastic concept distillation: the model before the task (teacher: the memory so far) supervises the new one
  on earlier concepts' prompts (eps matching on their bank samples, noised), each concept weighted by its
  elastic weight  w_c = distill_weight * (1 + cos(f_c, f_new)) / mean over earlier c (1 + cos)
  (our reading: concepts that look like the new one are the ones it would overwrite, so they weigh more).
Both terms are taken on the same noised bank samples, riding the new images' UNet pass (`Rehearsal`).
A bound on each task's weight offset is added (ours, not the paper's): the parameter-offset penalty
offset_penalty * ||delta W||^2 on the new offset, from the first concept on. Without it each task moved the
whole model (drift grew task by task and every concept with it); with it the memory keeps its concepts and the
base model's prompts (README: the memory bench with and without it). Its default, 3e-4, was chosen for UNet
tasks on five calibration creatures no bench uses (30-34; `conceptkit bench memory_penalty`, docs/methods.md).
What a task fine-tunes is the memory's choice, made when it is created (`MemoryStore.trains`): every UNet weight
(the default), the attention weights, or a LoRA. The new offset is then consolidated into the memory's: offsets
add, so a memory of weight offsets holds their sum (what applying it changes) and each concept's own (to take one
out again), and a LoRA memory joins the LoRAs along the rank (down = [d_old; d_new], up = [u_old, u_new] with
each one's scale folded into its up) — exact, one LoRA. The full UNet is the default because it is what keeps two
concepts apart in one picture: on the memory bench (docs/benchmarks.md) the share of pair halves drawn more like
the other creature is 0.23 with UNet tasks, 0.36 with LoRA tasks, 0.46 for LoRAs trained apart and merged. Its
cost is the size: each concept's offset is as large as the UNet (6 MB on the embedded model, 3.4 GB on SD1.5 in
float32: choose 'lora' there).
Old training images are not kept: at every task new samples are drawn for every concept's prompts and
compete with the ones the bank holds (bank.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ...concepts import Concept, apply_concept
from ...errors import InputError
from ...model import Model
from ...model.image_features import ImageBackbone, backbone_for
from ...sampling import CFG, sample
from ...training import (
    ImageReplay,
    OffsetPenalty,
    Rider,
    RunFolder,
    TrainConfig,
    fill_template,
    keep_result,
    kept_result,
    prepare_images,
    ride_alone,
    settings_signature,
    train_concept,
)
from .bank import DEFAULT_BETA, MemoryBank
from .composites import pair_composites
from .store import MemoryState, MemoryStore

METHOD = "concept_memory"
METHOD_NAME = "Concept Memory"
BANK_TEMPLATES = ("a {trigger} {class}", "a {trigger} {class} on the left", "a {trigger} {class} on the right",
                  "a {trigger} {class} at the top", "a {trigger} {class} at the bottom",
                  "a {trigger} {class}, red background", "a {trigger} {class}, blue striped background",
                  "a {trigger} {class}, yellow dotted background")
LEARNING_RATES = {"full": 5e-5, "attention": 2e-4, "lora": 5e-3}  # the weights' AdamW rate, by what the memory trains
TASK_OFFSETS = "memory"  # the concept group holding each concept's own offset in a memory of weight offsets


@dataclass
class LearnSettings:
    steps: int = 300
    rank: int = 16  # a LoRA memory's rank per concept
    learning_rate: float = 0.0  # 0: LEARNING_RATES for what the memory trains
    batch_size: int = 4
    rehearsal_batch: int = 2  # earlier concepts' bank samples per step, in the same pass as the new images
    replay_weight: float = 1.0  # mu
    distill_weight: float = 4.0  # chosen on calibration creatures (benchmarks docs: memory_penalty)
    offset_penalty: float = 3e-4  # lambda of each task's ||delta W||^2 (0: off); chosen on calibration creatures
    beta: float = DEFAULT_BETA
    candidates: int = 8  # generated per concept at each task
    keep: int = 4  # kept per concept in the short-term memory
    pair_composites: bool = True  # learn a concept beside earlier ones where its captions say a side (composites.py)
    seed: int = 0
    checkpoint_every: int = 100

    def signature(self) -> str:
        return settings_signature(self)


IF_LEARNED = ("new_version", "error")  # what learning a trigger the memory holds does


@dataclass
class Rehearsal:
    """Both terms on earlier concepts' bank samples, at one noised sample of each and no UNet call of their own:
    replay (`replay_weight` x the denoising loss: an ImageReplay of the bank, which draws the samples) and elastic
    distillation (each sample's elastic weight x the eps matching against the model before the task) ride the new
    images' pass (objective.Rider, taught). A task with earlier concepts costs a larger batch in the same pass and
    the teacher's predictions on the bank samples (made with the pair composites', many steps' in one call), not a
    second pass."""

    images: torch.Tensor
    prompts: list[str]
    weights: list[float]  # per sample: its concept's elastic weight (distill_weight folded in)
    replay_weight: float
    batch: int = 2  # bank samples per step
    name: str = "rehearsal"
    _replay: ImageReplay | None = field(default=None, repr=False)

    def __post_init__(self):
        self._replay = ImageReplay(self.images, self.prompts, self.replay_weight, name="replay")

    def ride(self, run, step, generator) -> Rider:
        pick, noised = self._replay.draw(run, self.batch, generator)
        weights = torch.tensor([self.weights[i] for i in pick], device=run.model.device)

        def loss(student: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
            total = self.replay_weight * F.mse_loss(student, noised.target.float())
            if target is not None:
                total = total + (weights * F.mse_loss(student, target, reduction="none").mean((1, 2, 3))).mean()
            return total

        return Rider(noised, [self.prompts[i] for i in pick], loss, taught=bool(weights.any()))

    def __call__(self, run, step, generator):
        return ride_alone(run, self.ride(run, step, generator))


def bank_features(backbone: ImageBackbone, images: torch.Tensor) -> torch.Tensor:
    """Pooled backbone features [N, D] of images [N, 3, H, W] in -1..1."""
    return torch.cat([backbone.pooled(chunk) for chunk in images.split(16)]).cpu()


def consolidate(old: Concept | None, new: Concept, name: str) -> Concept:
    """The memory's concept with `new` added: its trigger vectors, and its offset added to the memory's (a LoRA
    joined to the old along the rank; weight offsets summed, each concept's own kept)."""
    if old is not None and old.kind != new.kind:
        raise InputError(f"a {new.kind} concept cannot join a memory of {old.kind} offsets.")
    tensors: dict[str, torch.Tensor] = {}
    old_triggers = old.triggers if old is not None else ()
    for k in range(len(old_triggers)):
        for i, vector in enumerate(old.embeddings(k)):
            tensors[f"embedding.{k}.te{i}"] = vector
    for i, vector in enumerate(new.embeddings(0)):
        tensors[f"embedding.{len(old_triggers)}.te{i}"] = vector
    triggers = (*old_triggers, *new.triggers)
    if new.kind == "delta":
        own = [*_task_offsets(old), new.deltas()]
        return Concept(name, METHOD, new.family, new.base_fingerprint, triggers, tensors | _offset_tensors(own),
                       parameters={"concepts": len(triggers), "token_start": "rare"})
    parts = [c for c in (old, new) if c is not None and c.lora_modules()]
    modules = sorted({m for c in parts for m in c.lora_modules()})
    rank = 0
    for module in modules:
        downs, ups = [], []
        for concept in parts:
            found = concept.lora_modules().get(module)
            if found is None:
                continue
            down, up = found
            downs.append(down.float())
            ups.append(up.float() * concept.lora_scale)
        tensors[f"lora.{module}.down"] = torch.cat(downs)
        tensors[f"lora.{module}.up"] = torch.cat(ups, dim=1)
        rank = max(rank, sum(d.shape[0] for d in downs))
    ranks = [*(old.parameters.get("ranks", []) if old is not None else []), new.lora_rank]
    return Concept(name, METHOD, new.family, new.base_fingerprint, triggers, tensors,
                   lora_rank=rank, lora_alpha=float(rank), parameters={"concepts": len(triggers),
                                                                       "ranks": ranks, "token_start": "rare"})


def _task_offsets(memory: Concept | None) -> list[dict[str, torch.Tensor]]:
    """Each concept's own weight offset in a memory of offsets, in the memory's order."""
    if memory is None:
        return []
    own: list[dict[str, torch.Tensor]] = [{} for _ in memory.triggers]
    for key, offset in memory.group(TASK_OFFSETS).items():
        index, _, parameter = key.partition(".")
        own[int(index)][parameter] = offset
    return own


def _offset_tensors(own: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A memory's offset tensors from each concept's own: their sum (summed in the memory's order, so the same
    concepts always give the same weights) and each one under its index."""
    total: dict[str, torch.Tensor] = {}
    for offsets in own:
        for parameter, offset in offsets.items():
            total[parameter] = total[parameter] + offset.float() if parameter in total else offset.float().clone()
    return {**{f"delta.{p}": t for p, t in total.items()},
            **{f"group.{TASK_OFFSETS}.{k}.{p}": o for k, offsets in enumerate(own) for p, o in offsets.items()}}


def without(memory: Concept, trigger: str, ranks: list[int]) -> Concept | None:
    """The memory's concept without `trigger`: its vectors and its offset (its slice of a joined LoRA: `ranks`,
    each trigger's rank in the memory's order; its own offset in a memory of weight offsets); None when it was
    the only one."""
    words = [t.word for t in memory.triggers]
    index = words.index(trigger)
    kept = [k for k in range(len(words)) if k != index]
    if not kept:
        return None
    tensors = {f"embedding.{new}.te{i}": vector for new, k in enumerate(kept)
               for i, vector in enumerate(memory.embeddings(k))}
    triggers = tuple(memory.triggers[k] for k in kept)
    if memory.kind == "delta":
        own = _task_offsets(memory)
        return Concept(memory.name, METHOD, memory.family, memory.base_fingerprint, triggers,
                       tensors | _offset_tensors([own[k] for k in kept]),
                       parameters={"concepts": len(kept), "token_start": "rare"})
    start, stop = sum(ranks[:index]), sum(ranks[:index + 1])
    for module, (down, up) in memory.lora_modules().items():  # alpha = rank: the joined LoRA's scale is 1
        tensors[f"lora.{module}.down"] = torch.cat([down[:start], down[stop:]])
        tensors[f"lora.{module}.up"] = torch.cat([up[:, :start], up[:, stop:]], dim=1)
    rank = sum(ranks) - ranks[index]
    return Concept(memory.name, METHOD, memory.family, memory.base_fingerprint, triggers, tensors,
                   lora_rank=rank, lora_alpha=float(rank),
                   parameters={"concepts": len(kept), "ranks": [r for k, r in enumerate(ranks) if k != index],
                               "token_start": "rare"})


def _forgotten(store: MemoryStore, state: MemoryState, trigger: str) -> MemoryState:
    """The memory as if `trigger` had never been learned (to learn it again as a new version; the versions on
    disk stay as they are). A LoRA memory made before concepts recorded their ranks reads them from its versions."""
    ranks = []
    if state.concept.kind == "lora":
        ranks = state.concept.parameters.get("ranks") or [int(store.learned_by(t.word)["rank"])
                                                          for t in state.concept.triggers]
    return replace(state, concept=without(state.concept, trigger, ranks), bank=state.bank.without(trigger))


def learn(store: MemoryStore, model: Model, images, trigger: str, class_word: str,
          settings: LearnSettings | None = None, *, captions: list[str] | None = None,
          clip_vision: ImageBackbone | None = None, checkpoint_dir: Path | None = None, progress=None,
          cancel: Callable[[], bool] | None = None, preview=None, identity: str = "",
          if_learned: str = "new_version") -> MemoryState:
    """Learn one concept into the memory: a new version, or nothing changed if anything fails or is cancelled.
    `identity` names this learning (images, settings): the same learning queued again after it finished returns
    the memory as it is. A different learning of a trigger the memory holds (`if_learned`): "new_version" learns
    it again, on the memory without it, as a new version (the earlier versions stay on disk); "error" refuses."""
    settings = settings or LearnSettings()
    trigger, class_word = trigger.strip(), class_word.strip()
    if if_learned not in IF_LEARNED:
        raise InputError(f"if_learned '{if_learned}' is not one of {', '.join(IF_LEARNED)}.")
    with store.writer():
        store.check_fits(model)
        state = store.current()
        if trigger in state.triggers:
            if identity and identity == store.learned_by(trigger).get("identity"):
                return state
            if if_learned == "error":
                raise InputError(f"memory '{store.name}' already holds '{trigger}' (version {state.version}); choose "
                                 "a new trigger for a new concept, or set if_learned to new_version to learn it "
                                 "again.")
            state = _forgotten(store, state, trigger)
        backbone = backbone_for(model, clip_vision, METHOD_NAME)
        pixels = prepare_images(images, model.default_size)
        bank = state.bank
        new_features = bank_features(backbone, pixels).mean(0)
        made_with = f"{backbone.name}:{len(new_features)}"
        if bank.backbone and bank.backbone != made_with:
            raise InputError(f"memory '{store.name}' scores its bank with {bank.backbone} features; these are "
                             f"{made_with}. Connect the same image model (CLIP vision) it was made with.")
        before = apply_concept(model, state.concept) if state.concept is not None else model
        terms = _loss_terms(bank, new_features, settings)
        # the trigger's own vector, distinct from the start and trained: two concepts of one class must not read
        # alike (with the class word's vector untrained, "a <a> dog" and "a <b> dog" encode the same)
        trains = store.trains()
        config = TrainConfig(trigger=trigger, class_word=class_word, captions=captions, trainable=trains,
                             token_init="rare", train_token=True, rank=settings.rank, steps=settings.steps,
                             learning_rate=settings.learning_rate or LEARNING_RATES[trains],
                             batch_size=settings.batch_size, seed=settings.seed,
                             checkpoint_every=settings.checkpoint_every, method=METHOD,
                             parameters={**{k: v for k, v in asdict(settings).items()
                                            if k in ("replay_weight", "distill_weight", "offset_penalty", "beta")},
                                         "memory_version": state.version})
        # a finished training is kept in its run folder until committed: a crash between the two loses nothing,
        # and the learning queued again commits without training again (if the memory is still as it was)
        folder = RunFolder(Path(checkpoint_dir)) if checkpoint_dir is not None else None
        learned = kept_result(folder, settings.steps) if folder is not None else None
        if (learned is None or learned.concept.parameters.get("memory_version") != state.version
                or learned.concept.parameters.get("trainable") != trains):
            composites = pair_composites(before, pixels, captions, _earlier(state), settings.seed) \
                if settings.pair_composites else None
            if composites is not None:  # one of each step's new samples is a composite: the batch costs the same
                terms = [*terms, ImageReplay(composites.images, [fill_template(c, config) for c in composites.captions],
                                             name="pair_composites", masks=composites.masks, count=1,
                                             teacher_weight=settings.distill_weight)]
                config = replace(config, batch_size=max(1, config.batch_size - 1))
            learned = train_concept(before, images, config, terms, name=trigger.strip("<>") or "concept",
                                    checkpoint_dir=checkpoint_dir, progress=progress, cancel=cancel, preview=preview,
                                    on_finished=None if folder is None else lambda result: keep_result(folder, result))
        merged = consolidate(state.concept, learned.concept, store.name)
        # the bank draws a concept with the prompts it was learned from (its captions' text is kept, its images not)
        prompts = [t.replace("{trigger}", trigger).replace("{class}", class_word)
                   for t in dict.fromkeys(captions or BANK_TEMPLATES)]
        bank = replace(bank, features={**bank.features, trigger: new_features},
                       prompts={**bank.prompts, trigger: prompts}, backbone=made_with)
        bank = refresh_bank(apply_concept(model, merged), backbone, bank, settings)
        return store.commit(merged, bank, trigger, {**asdict(settings), "final_loss": learned.losses[-1],
                                                    "identity": identity})


def _earlier(state: MemoryState) -> list[tuple[str, str]]:
    """The memory's concepts as (trigger, class word), in the order they were learned."""
    return [] if state.concept is None else [(t.word, t.class_word) for t in state.concept.triggers]


def _loss_terms(bank: MemoryBank, new_features: torch.Tensor, settings: LearnSettings) -> list:
    bound = [OffsetPenalty(settings.offset_penalty)] if settings.offset_penalty else []
    images, prompts, owners = bank.replay()
    if not len(images):
        return bound
    similarity = {t: 1 + float(F.cosine_similarity(f, new_features, dim=0)) for t, f in bank.features.items()}
    mean = sum(similarity[o] for o in set(owners)) / len(set(owners))
    weights = [settings.distill_weight * similarity[o] / mean for o in owners]
    if not settings.replay_weight and not settings.distill_weight:
        return bound
    return [Rehearsal(images, prompts, weights, settings.replay_weight, settings.rehearsal_batch), *bound]


def refresh_bank(memory_model: Model, backbone: ImageBackbone, bank: MemoryBank, settings: LearnSettings
                 ) -> MemoryBank:
    """For every concept that needs them (a new one, or one whose prompts changed): `candidates` samples of its
    prompts from the memory as it now is, scored together with its short-term samples so far; the best `keep`
    become its short-term samples. The bank grows by what is new: a concept whose samples were drawn from its own
    prompts keeps them (drawn while it was fresh, they stay: the bank does not follow a concept that fades), so
    learning the fifth concept samples as much as learning the first."""
    for owner, prompts in bank.prompts.items():
        held = [i for i, o in enumerate(bank.owners) if o == owner]
        if held and all(bank.image_prompts[i] in prompts for i in held):
            continue
        chosen = [prompts[i % len(prompts)] for i in range(settings.candidates)]
        with torch.no_grad():
            result = sample(memory_model, chosen, seed=settings.seed, steps=25, guidance=CFG(5.0))
        images = prepare_images(result.images, memory_model.default_size)
        best = bank.scores(bank_features(backbone, images), owner, settings.beta).argsort(descending=True)
        best = best[:settings.keep].tolist()
        bank = bank.with_samples(owner, images[best], [chosen[i] for i in best])
    return bank
