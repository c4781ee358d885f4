"""The bench suites, registered in one place: name -> (module, function). A suite takes BenchOptions and
returns (rows, grids, notes, figures): figures are named PIL images for the report. Modules load on use."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

SUITES = {
    "base": ("base", "base_suite"),
    "finetune": ("finetune", "finetune_suite"),
    "finetune_lambda": ("finetune", "lambda_suite"),
    "encoder": ("encoder", "encoder_suite"),
    "guidance": ("guidance", "guidance_suite"),
    "sampling": ("sampling", "sampling_suite"),
    "sge": ("sge", "sge_suite"),
    "memory": ("memory", "memory_suite"),
    "memory_penalty": ("memory", "penalty_suite"),
}


@dataclass(frozen=True)
class BenchOptions:
    quick: bool = False
    model: str | None = None  # None: the embedded model
    seed: int = 0


def run_suite(name: str, options: BenchOptions):
    module, function = SUITES[name]
    return getattr(importlib.import_module(f".{module}", __package__), function)(options)
