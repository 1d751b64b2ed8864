"""Benchmark-wide settings: GPU benchmarks skip without CUDA; end-to-end results are written at the end."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests.model_factory` for the random models

from bench import e2e_results  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (bench/gpu_check.sh runs these on a GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_sessionfinish(session, exitstatus):
    if e2e_results.RESULTS:
        path = e2e_results.write_results()
        print(f"\n{e2e_results.format_table()}\nend-to-end results written to {path}")
