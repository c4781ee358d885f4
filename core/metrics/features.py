"""Distances between sets of feature vectors: Fréchet distance (FID protocol) and diversity
(CRDI's intra-cluster protocol)."""

from __future__ import annotations

import numpy as np
import torch


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] (FID's formula)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    value = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(cross)
    return float(max(value, 0.0))


def diversity(samples: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor) -> float:
    """Intra-cluster diversity: assign each sample to its nearest target (cosine), then average the
    mean pairwise cosine distance inside each cluster of two or more samples."""
    s = torch.nn.functional.normalize(torch.as_tensor(np.asarray(samples), dtype=torch.float32), dim=1)
    t = torch.nn.functional.normalize(torch.as_tensor(np.asarray(targets), dtype=torch.float32), dim=1)
    assignment = (s @ t.T).argmax(1)
    scores = []
    for k in assignment.unique():
        members = s[assignment == k]
        if len(members) < 2:
            continue
        distances = 1 - members @ members.T
        n = len(members)
        scores.append(float(distances.sum() / (n * (n - 1))))
    return float(np.mean(scores)) if scores else 0.0
