"""What the bench suites share: the evaluation protocol (sampling steps, CFG, images per prompt set), the
personalization protocol (subjects, steps, one setting per method, chosen once and never tuned per run), the
prompts that measure drift, and running a method in a fresh process (its wall time and peak memory its own)."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor

from ..core.methods.lipschitz_finetune import DEFAULT_LAMBDA

SUBJECTS = {False: 4, True: 1}
STEPS = {False: 300, True: 60}
TRAINING_IMAGES, EVAL_IMAGES, DRIFT_IMAGES = 4, 8, 24
EVAL_STEPS, EVAL_CFG = 25, 5.0
# One setting per method, chosen once (see README); never tuned per run.
SETTINGS = {
    "lipschitz": dict(trainable="lora", rank=8, learning_rate=5e-3, lipschitz_lambda=DEFAULT_LAMBDA),
    "dreambooth_lora": dict(trainable="lora", rank=8, learning_rate=5e-3),
    "dreambooth_prior": dict(trainable="lora", rank=8, learning_rate=5e-3, prior_weight=1.0, class_image_count=16),
    "textual_inversion": dict(embedding_learning_rate=5e-3),
}
TRAIN_FIELDS = {"trainable", "rank", "learning_rate", "embedding_learning_rate", "augment_scale", "token_init"}


def drift_scenes():
    """Prompts WITHOUT a personal token: shape scenes of the training distribution and plain class prompts."""
    from ..core.world import evaluation_scenes
    from ..core.world.subjects import evaluation_scenes as subject_scenes

    creatures = [s for i in range(DRIFT_IMAGES // 3) for s in subject_scenes(50 + i, "", 1)]
    return evaluation_scenes("seen", DRIFT_IMAGES - len(creatures), seed=77) + creatures


def generate(model, scenes, seed: int):
    from ..core.sampling import CFG, sample
    from ..core.world.metrics import as_uint8

    captions = [s.caption() for s in scenes]
    return as_uint8(sample(model, captions, seed=seed, steps=EVAL_STEPS, guidance=CFG(EVAL_CFG)).images)


def train_method(model, images, config, method: str, **settings):
    """Lipschitz Finetune, or one of the baseline recipes, on the same training service."""
    from ..core.methods import lipschitz_finetune
    from ..core.recipes import train_recipe

    if method == lipschitz_finetune.METHOD:
        return lipschitz_finetune.finetune(model, images, config, **settings)
    return train_recipe(model, images, config, method, **settings)


def subject_words(method: str, config) -> str:
    """How prompts name the subject a method learns with `config` (the identifier rule, training.identifier)."""
    from ..core.recipes import RECIPES, recipe_config
    from ..core.training import identifier

    return identifier(recipe_config(method, config) if method in RECIPES else config)


def run_isolated(function, *args):
    """function(*args) in a fresh process, so its wall time and peak memory are its own. The process ends with the
    bench: killed or interrupted, it leaves nothing running to slow the next one."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        return pool.submit(function, *args).result()


PARENT_CHECK_SECONDS = 0.5


def _exit_with_parent(parent: int) -> None:
    """In a worker: a watcher that ends the process as soon as the bench that started it is gone."""
    def watch():
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()
