"""Benchmark-wide settings: GPU benchmarks skip without CUDA; end-to-end results are written at the end."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests.model_factory` for the random models

from bench import e2e_results  # noqa: E402
from tests.gpu_skip import skip_gpu_items_without_cuda  # noqa: E402


def pytest_collection_modifyitems(config, items):
    skip_gpu_items_without_cuda(items)
    # fastddpm and its diffusers baselines at one (model, batch) run back to back rather than a whole test
    # function apart: the ratios then compare measurements minutes, not tens of minutes, apart.
    items.sort(key=_case_of)


def _case_of(item) -> tuple:
    callspec = getattr(item, "callspec", None)
    if item.path.name != "test_bench_e2e.py" or callspec is None:
        return (0, "", 0)  # other files keep their order (a stable sort), ahead of the end-to-end runs
    return (1, callspec.params.get("name", ""), callspec.params.get("batch", 0))


def pytest_sessionfinish(session, exitstatus):
    if e2e_results.RESULTS or e2e_results.INTERLEAVED:
        path = e2e_results.write_results()
        print(f"\n{e2e_results.format_table()}\nend-to-end results written to {path}")
