"""Datasets, the resumable benchmark runner, and reports."""

from .datasets import DATASETS, EditItem, decode_pie_mask, open_dataset, strip_brackets
from .runner import BenchConfig, bench_methods, load_rows, run_bench

__all__ = ["bench_methods", "BenchConfig", "DATASETS", "EditItem", "decode_pie_mask", "load_rows", "open_dataset",
           "run_bench", "strip_brackets"]
