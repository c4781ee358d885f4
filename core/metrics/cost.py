"""Cost of a piece of work: wall time and peak memory (GPU when on CUDA, else process RSS growth)."""

from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class Cost:
    seconds: float = 0.0
    peak_mb: float = 0.0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def measure_cost(device: torch.device | str = "cpu"):
    """with measure_cost() as cost: ...  -> cost.seconds, cost.peak_mb after the block."""
    cost = Cost()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start_rss, start = _rss_mb(), time.perf_counter()
    try:
        yield cost
    finally:
        if cuda:
            torch.cuda.synchronize()
            cost.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            cost.peak_mb = max(_rss_mb() - start_rss, 0.0)
        cost.seconds = time.perf_counter() - start
