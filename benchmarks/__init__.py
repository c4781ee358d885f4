"""`conceptkit bench SUITE`: the world's fixed comparisons, printed as tables, written as JSON rows
and a markdown report with image grids."""

from .registry import SUITES, BenchOptions, run_suite
from .report import write_report

__all__ = ["SUITES", "BenchOptions", "run_suite", "write_report"]
