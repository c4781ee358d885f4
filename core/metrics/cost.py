"""Cost of a piece of work: wall time and peak memory (GPU when on CUDA, else the process's resident
memory, sampled while the work runs, above what it was when the work began)."""

from __future__ import annotations

import os
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

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


class _LiveTensors(TorchDispatchMode):
    """Counts the bytes of the tensor storages that operations create while it is active, until they are freed."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.storages: dict[int, list[int]] = {}  # data pointer -> [bytes, tensors referring to it]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key == 0:
                    continue
                if key not in self.storages:
                    self.storages[key] = [storage.nbytes(), 0]
                    self.live += storage.nbytes()
                self.storages[key][1] += 1
                weakref.finalize(tensor, self._release, key)
        self.peak = max(self.peak, self.live)
        return out

    def _release(self, key: int) -> None:
        entry = self.storages.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.live -= entry[0]
                del self.storages[key]


@contextmanager
def measure_tensor_memory(device: torch.device | str = "cpu"):
    """with measure_tensor_memory() as cost: ... -> cost.peak_mb: the most memory the block's tensors held at
    once (GPU: allocated memory; CPU: the storages its operations created, counted exactly, so unlike the
    resident memory it does not depend on what the allocator kept from earlier work). Slower than
    `measure_cost` on CPU: use it for memory only."""
    if torch.device(device).type == "cuda":
        with measure_cost(device) as cost:
            yield cost
        return
    cost = Cost()
    tracker = _LiveTensors()
    try:
        with tracker:
            yield cost
    finally:
        cost.peak_mb = tracker.peak / 2**20
