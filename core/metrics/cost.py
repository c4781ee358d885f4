"""Cost of a piece of work: wall time and peak memory (GPU when on CUDA, else the process's resident
memory, sampled while the work runs, above what it was when the work began)."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

SAMPLE_SECONDS = 0.005


@dataclass
class Cost:
    seconds: float = 0.0
    peak_mb: float = 0.0


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux /proc; elsewhere the high-water mark)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _RssSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.start_mb = self.peak_mb = current_rss_mb()
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.wait(SAMPLE_SECONDS):
            self.peak_mb = max(self.peak_mb, current_rss_mb())


@contextmanager
def measure_cost(device: torch.device | str = "cpu"):
    """with measure_cost() as cost: ...  -> cost.seconds, cost.peak_mb after the block."""
    cost = Cost()
    cuda = torch.device(device).type == "cuda"
    sampler = None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_mb = torch.cuda.memory_allocated() / 2**20
    else:
        sampler = _RssSampler()
        sampler.start()
    start = time.perf_counter()
    try:
        yield cost
    finally:
        if cuda:
            torch.cuda.synchronize()
            cost.peak_mb = torch.cuda.max_memory_allocated() / 2**20 - start_mb
        else:
            sampler.stopping.set()
            sampler.join()
            cost.peak_mb = max(max(sampler.peak_mb, current_rss_mb()) - sampler.start_mb, 0.0)
        cost.seconds = time.perf_counter() - start
