"""Test-wide settings: GPU tests skip without CUDA; torch uses one CPU thread; Triton interprets on CPU;
torch.compile's cache is kept per CPU vector capability.

One thread: the tests' tensors are small, and on a busy 2-core machine two OpenMP threads per op measured
10-25x slower than one (a small U-Net parity check: 5.5 s vs 0.2-0.4 s).
"""

import getpass
import os
import tempfile

import pytest
import torch

from tests.gpu_skip import skip_gpu_items_without_cuda

torch.set_num_threads(1)
if not torch.cuda.is_available():
    # Triton kernels are defined for the interpreter or the GPU when first imported, by whichever test
    # imports them first; without CUDA that must be the interpreter, for every test module alike. Under
    # FASTDDPM_BACKEND=auto the triton backend still refuses CPU tensors, so other tests run as before.
    os.environ.setdefault("TRITON_INTERPRET", "1")

# torch.compile's C++ code cache is keyed without ATEN_CPU_CAPABILITY, yet its code differs with it: on an
# Intel Xeon (AVX-512, AMX) a run under ATEN_CPU_CAPABILITY=avx2 after a native one reused the native
# entries and returned NaN (a compiled U-Net, tests/ops/test_compile_through_triton.py), and a native run
# after an avx2 one aborted ("corrupted size vs. prev_size"); each is right with a cache of its own. The
# suite is run under several capabilities on one machine (.ci/run, README), so each gets its own folder;
# subprocesses inherit it. A folder set by the caller is kept.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    os.path.join(
        tempfile.gettempdir(),
        f"torchinductor_{getpass.getuser()}_{torch.backends.cpu.get_cpu_capability().lower()}",
    ),
)


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """Every test ends on the thread count it started with: the CLI sets torch's threads (to the free
    cores), and a test calling its main() directly once left 2 threads to every later test, which moved
    results that depend on oneDNN's reduction order (Heun on an ADM net: 7e-6 -> 1.2e-4)."""
    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    skip_gpu_items_without_cuda(items)


SMALL_UNET_SIZES = dict(sample_size=[16, 8], block_out_channels=[16, 24, 24, 24], norm_num_groups=4)


@pytest.fixture(scope="module")
def small_fastddpm_unet():
    """The same structure as small_unet as fastddpm's own UNet2D, without diffusers (the GPU image lacks it,
    so GPU tests use this one)."""
    from tests import model_factory

    return model_factory.random_fastddpm_unet(model_factory.small_cifar10_config(**SMALL_UNET_SIZES), seed=3)


@pytest.fixture(scope="module")
def small_unet():
    """diffusers' UNet2DModel in the cifar10-32 structure, tiny (the pipeline and engine tests sample with it:
    20 full steps, twice, per case), random weights."""
    from tests import model_factory

    return model_factory.random_unet(model_factory.small_cifar10_config(**SMALL_UNET_SIZES), seed=3)
