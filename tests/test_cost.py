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
