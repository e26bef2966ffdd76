"""Datasets, the resumable benchmark runner, and reports."""

from .datasets import DATASETS, EditItem, decode_pie_mask, open_dataset, strip_brackets
from .runner import BENCH_METHODS, BenchConfig, load_rows, run_bench

__all__ = ["BENCH_METHODS", "BenchConfig", "DATASETS", "EditItem", "decode_pie_mask", "load_rows", "open_dataset",
           "run_bench", "strip_brackets"]
