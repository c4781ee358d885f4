"""The world's metrics, exact from its ground truth (WORLD.md). Images are uint8 [N, 64, 64, 3]
arrays or float [N, 64, 64, 3] tensors in 0..1 (ComfyUI's layout)."""

from __future__ import annotations

import numpy as np
import torch

from ..metrics.features import diversity, frechet_distance
from .checkers import (
    ALL_PATTERNS,
    COLOUR_NAMES,
    REGIONS,
    attribute_accuracy,
    nearest_reference,
    pair_accuracy,
    read_background_pattern,
    read_domain,
    read_object,
    text_fidelity,
)
from .metric_nets import load_identity_network
from .scenes import Scene
from .vocabulary import COLOURS, HELDOUT_STYLE, IMAGE_SIZE, SHAPES


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


PATTERN_WEIGHT = 2.0


def scene_features(images) -> np.ndarray:
    """A feature vector per image from what the checkers read, [N, 32]: background colour (one-hot), the
    agreement of each background pattern (weighted PATTERN_WEIGHT: the style is what a domain is), the dominant
    object's colour, shape and size (one-hot; zeros when there is none) and its centroid."""
    rows = []
    for image in as_uint8(images):
        background = read_background_pattern(image)
        reading = read_object(nearest_reference(image), background.colour, None)
        row = np.zeros(len(COLOURS) + len(ALL_PATTERNS) + len(COLOURS) + len(SHAPES) + 1 + 2, np.float64)
        row[COLOUR_NAMES.index(background.colour)] = 1
        offset = len(COLOURS)
        row[offset:offset + len(ALL_PATTERNS)] = [PATTERN_WEIGHT * background.scores[p] for p in ALL_PATTERNS]
        offset += len(ALL_PATTERNS)
        if reading.found:
            row[offset + COLOUR_NAMES.index(reading.colour)] = 1
            row[offset + len(COLOURS) + SHAPES.index(reading.shape)] = 1
            row[offset + len(COLOURS) + len(SHAPES)] = reading.size == "large"
            row[-2:] = np.array(reading.centroid) / IMAGE_SIZE
        rows.append(row)
    return np.stack(rows)


def domain_hit_rate(images, domain: str = HELDOUT_STYLE) -> float:
    """The share of images whose background shows `domain` (one of HELDOUT_DOMAINS), read exactly."""
    return float(np.mean([read_domain(image) == domain for image in as_uint8(images)]))


def domain_fidelity(images, domain_images, features: str = "scene") -> float:
    """Fréchet distance to held-out renders of a target domain (lower is closer; CRDI's FID protocol), in the
    scene feature vector ("scene") or the identity network's features ("identity")."""
    embed = scene_features if features == "scene" else identity_features
    return frechet_distance(embed(images), embed(domain_images))


def sample_diversity(images, targets, features: str = "scene") -> float:
    """CRDI's intra-cluster protocol, in the scene feature vector or the identity network's features."""
    embed = scene_features if features == "scene" else identity_features
    return diversity(embed(images), embed(targets))


def masked_half(image: np.ndarray, place: str) -> np.ndarray:
    """The image with everything outside the half named by `place` (left/right/top/bottom) painted in the
    background colour: one subject of a two-subject scene, alone."""
    background = COLOURS[read_background_pattern(image).colour]
    keep = np.zeros(image.shape[:2], bool)
    keep[REGIONS[place]] = True
    out = np.array(image)
    out[~keep] = background
    return out


def pair_fidelity(images, scenes: list[Scene], references: dict[int, np.ndarray]) -> dict[str, float]:
    """For scenes with two subjects (creatures by their seeds, `references[seed]` their renders): whether both
    are present at their places, each half's similarity to its own subject, and homogenization (the share of
    halves more similar to the other subject than to their own)."""
    present, right, homogenized = [], [], []
    for image, scene in zip(as_uint8(images), scenes, strict=True):
        creatures = [o for o in scene.objects if o.instance is not None]
        labels = nearest_reference(image)
        colour = read_background_pattern(image).colour
        present.append(all(read_object(labels, colour, REGIONS[o.position]).found for o in scene.objects))
        for obj in creatures:
            half = identity_features(masked_half(image, obj.position)[None])
            own = float((half @ identity_features(references[obj.instance]).T).mean())
            right.append(own)
            others = [o.instance for o in creatures if o.instance != obj.instance]
            if others:
                other = float((half @ identity_features(references[others[0]]).T).mean())
                homogenized.append(other > own)
    return {"both_present": float(np.mean(present)), "pair_fidelity": float(np.mean(right)) if right else 0.0,
            "homogenization": float(np.mean(homogenized)) if homogenized else 0.0}


def forgetting(fidelity_after: list[list[float]]) -> list[float]:
    """fidelity_after[k][j]: subject fidelity of concept j after learning concept k (j <= k).
    Returns, per concept j, its drop from just after it was learned to the end."""
    last = fidelity_after[-1]
    return [fidelity_after[j][j] - last[j] for j in range(len(last))]


__all__ = ["as_uint8", "attribute_accuracy", "domain_fidelity", "domain_hit_rate", "drift", "forgetting",
           "identity_features", "masked_half", "mean_text_fidelity", "pair_accuracy", "pair_fidelity",
           "sample_diversity", "scene_features", "subject_fidelity", "text_fidelity"]
