"""`conceptkit bench SUITE`: the world's fixed comparisons, printed as tables, written as JSON rows
and a markdown report with image grids."""

from .report import write_report
from .suites import SUITES, run_suite

__all__ = ["SUITES", "run_suite", "write_report"]
