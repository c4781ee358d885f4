"""Cost measurement, which every bench row's seconds and peak_mb come from."""

import time

import torch

from conceptkit.core.metrics import measure_cost


def test_peak_memory_counts_what_the_block_allocated_even_if_it_freed_it():
    with measure_cost("cpu") as cost:
        block = torch.ones(64, 2**20)  # 256 MB, touched
        time.sleep(0.05)
        del block
    assert 200 < cost.peak_mb < 400 and cost.seconds >= 0.05


def test_a_block_that_allocates_nothing_costs_no_memory():
    with measure_cost("cpu") as cost:
        time.sleep(0.02)
    assert cost.peak_mb < 20


def test_tensor_memory_counts_the_peak_of_live_tensors_exactly():
    from conceptkit.core.metrics import measure_tensor_memory

    outside = torch.ones(2**20)  # made before the block: not counted
    with measure_tensor_memory("cpu") as cost:
        first = torch.zeros(4, 2**20)  # 16 MB
        second = first + 1  # 16 MB more: 32 MB live at once
        del first, second
        third = outside * 2  # 4 MB, after the others were freed
    assert third.shape == outside.shape
    assert cost.peak_mb == 32.0
