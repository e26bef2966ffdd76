"""Benchmarks: datasets, the resumable runner and reports (imported on first use)."""

from .._lazy import lazy_attributes
from .names import bench_methods

__getattr__ = lazy_attributes(__name__, {
    "DATASETS": ".datasets", "EditItem": ".datasets", "decode_pie_mask": ".datasets", "open_dataset": ".datasets",
    "strip_brackets": ".datasets", "BenchConfig": ".runner", "load_rows": ".runner", "run_bench": ".runner",
})

__all__ = ["BenchConfig", "DATASETS", "EditItem", "bench_methods", "decode_pie_mask", "load_rows", "open_dataset",
           "run_bench", "strip_brackets"]
