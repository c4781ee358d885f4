"""The training run's extension points: an objective that conditions on x_t with a method's own trainable set and
a streamed data source (trains, resumes exactly), training on a model that carries concepts (they
stay bitwise as they were; the teacher is the model before the run), and concept files of format 2."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conceptkit.core.concepts import Concept, Trigger, apply_concept, load_concept, save_concept
from conceptkit.core.errors import Cancelled
from conceptkit.core.model import load_model, patches_in_effect
from conceptkit.core.model.patches import class_word_vector
from conceptkit.core.training import (
    Batch,
    DenoisingObjective,
    RunHooks,
    RunSettings,
    StepSettings,
    Stream,
    TrainableSet,
    TrainConfig,
    TrainingRun,
    train_concept,
    training_mode,
)
from conceptkit.core.world.scenes import Scene, WorldObject

from helpers.concepts import delta_concept, lora_concept


class XtHead(TrainableSet):
    """A method's own trainable: a 1x1 convolution of the noisy latent x_t, added to the UNet's prediction."""

    kind = "xt_head"

    def __init__(self, model):
        super().__init__(model, [class_word_vector(model, 0, "creature")], False, False)
        self.head = torch.nn.Conv2d(4, 4, 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(4, 4, 1, 1, generator=torch.Generator().manual_seed(0)) * 0.01)
            self.head.bias.zero_()

    def weight_parameters(self):
        return list(self.head.parameters())

    def concept_tensors(self):
        return {**super().concept_tensors(),
                **{f"group.xt_head.{k}": v.detach().clone() for k, v in self.head.state_dict().items()}}

    def state(self):
        return {**super().state(), **dict(self.head.named_parameters())}


class XtObjective(DenoisingObjective):
    """Conditions on x_t: the prediction is the UNet's plus the head's reading of x_t."""

    def prediction(self, run, noised, captions, batch):
        return super().prediction(run, noised, captions, batch) + run.trainable.head(noised.noisy)


def creature_stream(step: int, batch_size: int, generator: torch.Generator) -> Batch:
    """A fresh render of some creature at every step (a pre-training stream)."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31, (), generator=generator)))
    scenes = [Scene("blue", "plain", (WorldObject("left", instance=int(rng.integers(0, 100))),))
              for _ in range(batch_size)]
    images = torch.from_numpy(np.stack([s.render(rng) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    return Batch(images, ["a <c1> creature on the left, blue background"] * batch_size)


@pytest.fixture(scope="module")
def world():
    return load_model(device="cpu")


def config(**changes) -> TrainConfig:
    return dataclasses.replace(TrainConfig(trigger="<c1>", class_word="creature", steps=6, batch_size=2,
                                           learning_rate=1e-2), **changes)


def train_head(world, folder=None, cancel=None):
    """A run of a method's own: the x_t head on a stream, the run's word <c1>; returns (head weights, outcome)."""
    with training_mode(world):
        run = TrainingRun(world, XtHead, Stream(creature_stream), RunSettings(6, folder, signature="xt head"),
                          StepSettings(batch_size=2, seed=0),
                          optimizer=lambda t: torch.optim.AdamW(t.weight_parameters(), lr=1e-2, weight_decay=0.0),
                          objective=XtObjective(), token="<c1>", hooks=RunHooks(cancel=cancel))
        return run.train(lambda head, outcome: ({k: v.detach().clone() for k, v in head.head.state_dict().items()},
                                                outcome))


def test_an_objective_that_conditions_on_x_t_trains_from_a_stream_and_resumes_exactly(world, tmp_path):
    head, whole = train_head(world)
    assert not torch.equal(head["weight"], XtHead(world).head.weight)  # it trained
    assert len(whole.losses) == 6 and whole.finished
    (tmp_path / "notes.txt").write_text("mine")  # a user's file in the checkpoint folder
    stop_at = iter(range(100))
    with pytest.raises(Cancelled):
        train_head(world, tmp_path, cancel=lambda: next(stop_at) == 3)
    resumed_head, resumed = train_head(world, tmp_path)
    assert resumed.resumed_from == 3 and resumed.losses == whole.losses
    assert all(torch.equal(head[k], resumed_head[k]) for k in head)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # no checkpoint left; the user's file kept


@pytest.mark.parametrize("trainable", ["lora", "full"])
def test_training_on_a_model_with_concepts_leaves_them_bitwise_as_they_were(world, trainable):
    earlier = [lora_concept(world, seed=3), delta_concept(world, trigger="<t2>")]
    frozen = [{k: v.clone() for k, v in c.tensors.items()} for c in earlier]
    base = {k: v.clone() for k, v in world.unet.state_dict().items()}
    carrying = apply_concept(apply_concept(world, earlier[0]), earlier[1])
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    context = torch.randn(1, 32, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), patches_in_effect(carrying):
        before_run = carrying.unet(x, 500, encoder_hidden_states=context).sample

    class TeacherCheck:
        name = "teacher_check"
        gaps: list = []
        tokens: list = []

        def __call__(self, run, step, generator):
            with run.teacher() as teacher:
                self.gaps.append(float((teacher.unet(x, 500, encoder_hidden_states=context).sample
                                        - before_run).abs().max()))
                self.tokens.append(run.trainable.token[0].detach().clone())
            with torch.no_grad():
                self.gaps.append(-float((run.model.unet(x, 500, encoder_hidden_states=context).sample
                                         - before_run).abs().max()))
                self.tokens.append(run.trainable.token[0].detach().clone())
            return torch.zeros(())

    check = TeacherCheck()
    images = torch.rand(3, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    result = train_concept(carrying, images, config(trainable=trainable, steps=3, learning_rate=1e-3,
                                                    train_token=True), [check])
    for concept, tensors in zip(earlier, frozen, strict=True):
        assert all(torch.equal(concept.tensors[k], v) for k, v in tensors.items())
    assert all(torch.equal(v, world.unet.state_dict()[k]) for k, v in base.items())
    teacher_gaps, student_gaps = check.gaps[0::2], [-g for g in check.gaps[1::2]]
    assert max(teacher_gaps) <= 1e-5  # the teacher is the model as it was before the run, concepts included
    assert student_gaps[-1] > 1e-6  # while the student has moved
    teacher_tokens, student_tokens = check.tokens[0::2], check.tokens[1::2]
    assert all(torch.equal(v, student_tokens[0]) for v in teacher_tokens)  # the trigger's vector as it started
    assert not torch.equal(student_tokens[-1], student_tokens[0])
    with torch.no_grad(), patches_in_effect(apply_concept(carrying, result.concept)) as effect:
        assert len(effect.tokens) == 2  # the earlier LoRA concept's trigger and the new one


def test_concept_files_of_format_1_read_as_format_2(world, tmp_path):
    vector = torch.randn(1, 128, generator=torch.Generator().manual_seed(0))
    info = {"format_version": 1, "name": "old", "method": "textual_inversion", "family": "world",
            "base_fingerprint": world.fingerprint(), "trigger": "<old>", "class_word": "creature", "lora_rank": 0,
            "lora_alpha": 0.0, "parameters": {}}
    save_file({"embedding.te0": vector}, str(tmp_path / "old.safetensors"), metadata={"conceptkit": json.dumps(info)})
    concept = load_concept(tmp_path / "old.safetensors")
    assert concept.triggers == (Trigger("<old>", "creature"),) and torch.equal(concept.embeddings(0)[0], vector)
    two = Concept(name="pair", method="test", family="world", base_fingerprint=world.fingerprint(),
                  triggers=(Trigger("<a1>", "creature"), Trigger("<a2>", "creature")),
                  tensors={"embedding.0.te0": vector, "embedding.1.te0": -vector, "group.memory.bank": vector})
    again = load_concept(save_concept(two, tmp_path / "pair.safetensors"))
    assert again.triggers == two.triggers and torch.equal(again.group("memory")["bank"], vector)
    with patches_in_effect(apply_concept(world, again)) as effect:
        assert all(torch.equal(row.tuned, v) for row, v in zip(effect.tokens, (vector[0], -vector[0]), strict=True))
