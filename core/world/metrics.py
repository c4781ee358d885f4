"""The world's metrics, exact from its ground truth (WORLD.md). Images are uint8 [N, 64, 64, 3]
arrays or float [N, 64, 64, 3] tensors in 0..1 (ComfyUI's layout)."""

from __future__ import annotations

import numpy as np
import torch

from ..metrics.features import diversity, frechet_distance
from .checkers import attribute_accuracy, text_fidelity
from .metric_nets import load_identity_network
from .scenes import Scene


def as_uint8(images) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = (images.detach().float().clamp(0, 1).cpu().numpy() * 255).round()
    return np.asarray(images).astype(np.uint8)


@torch.no_grad()
def identity_features(images) -> torch.Tensor:
    """Unit embeddings of the identity network, [N, 64]."""
    x = torch.from_numpy(as_uint8(images)).permute(0, 3, 1, 2).float() / 255
    return torch.cat([load_identity_network()(chunk) for chunk in x.split(256)])


def mean_text_fidelity(images, scenes: list[Scene]) -> float:
    return float(np.mean([text_fidelity(i, s) for i, s in zip(as_uint8(images), scenes, strict=True)]))


def subject_fidelity(images, references) -> float:
    """Mean cosine similarity of identity embeddings over all (generated, reference) pairs (our DINO)."""
    return float((identity_features(images) @ identity_features(references).T).mean())


def drift(base_images, tuned_images, scenes: list[Scene]) -> dict[str, float]:
    """How far a personalized model moved on prompts WITHOUT its token: the change in text fidelity
    (base minus tuned, positive = worse) and the Fréchet distance of identity features."""
    return {
        "drift_text": mean_text_fidelity(base_images, scenes) - mean_text_fidelity(tuned_images, scenes),
        "drift_fd": frechet_distance(identity_features(base_images), identity_features(tuned_images)),
    }


def domain_fidelity(images, domain_images) -> float:
    """Fréchet distance to held-out renders of a target domain (lower is closer; CRDI's FID protocol)."""
    return frechet_distance(identity_features(images), identity_features(domain_images))


def sample_diversity(images, targets) -> float:
    """CRDI's intra-cluster protocol in the identity network's feature space."""
    return diversity(identity_features(images), identity_features(targets))


def forgetting(fidelity_after: list[list[float]]) -> list[float]:
    """fidelity_after[k][j]: subject fidelity of concept j after learning concept k (j <= k).
    Returns, per concept j, its drop from just after it was learned to the end."""
    last = fidelity_after[-1]
    return [fidelity_after[j][j] - last[j] for j in range(len(last))]


__all__ = ["as_uint8", "attribute_accuracy", "domain_fidelity", "drift", "forgetting", "identity_features",
           "mean_text_fidelity", "sample_diversity", "subject_fidelity", "text_fidelity"]
