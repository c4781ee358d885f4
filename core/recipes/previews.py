"""What a training node shows while it trains: a few cheap renders of the concept so far (how often: the
training engine's PreviewBudget)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..model import Model
from ..sampling import CFG, sample

PREVIEW_STEPS, PREVIEW_CFG = 8, 5.0


@dataclass(frozen=True)
class TrainingPreview:
    """Renders `prompt` with `seed` on the model as it trains (a few sampling steps, at the model's own size)."""

    prompt: str
    seed: int = 0
    steps: int = PREVIEW_STEPS

    @property
    def passes(self) -> int:
        """Its cost in denoiser passes over one sample: two per step (CFG's conditional and unconditional)."""
        return 2 * self.steps

    def __call__(self, model: Model) -> Image.Image:
        image = sample(model, self.prompt, seed=self.seed, steps=self.steps, guidance=CFG(PREVIEW_CFG)).images[0]
        return Image.fromarray((image.numpy() * 255).round().astype(np.uint8))
