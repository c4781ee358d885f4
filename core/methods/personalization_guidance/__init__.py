"""Personalization Guidance Sampler (METHODS.md §3; Park et al., ICCV 2025): sampling a personalized model
with guidance whose weak branch is the fine-tuned model partly "unlearned" toward its base,
theta_w = theta_pre + omega * (theta_ft - theta_pre), at the cost of CFG. CFG and autoguidance are the
other two modes of the same sampler, so the three compare on equal footing."""

from .guidance import GUIDANCE_MODES, Autoguidance, PersonalizationGuidance, WeakModelGuidance, guidance_for
from .sampler import DEFAULT_OMEGA, DEFAULT_W, personalization_sample, personalized
from .weak_model import WeakModel, checkpoint_difference

__all__ = ["DEFAULT_OMEGA", "DEFAULT_W", "GUIDANCE_MODES", "Autoguidance", "PersonalizationGuidance", "WeakModel",
           "WeakModelGuidance", "checkpoint_difference", "guidance_for", "personalization_sample", "personalized"]
