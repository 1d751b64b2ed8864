"""The one rule for `@pytest.mark.gpu` items, shared by tests/ and bench/: without CUDA they skip."""

import pytest
import torch


def skip_gpu_items_without_cuda(items) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (bench/gpu_check.sh runs these on a GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
