"""In-kernel philox noise (kernels/philox.py) against fastddpm/ops/noise.py: raw words bit for bit, normals to
1e-5 (log/cos/sqrt differ in their last bits between implementations), and the noise statistics.

Without CUDA the kernels run under the Triton interpreter: TRITON_INTERPRET=1 is set here, before any
kernel is defined. With CUDA they are compiled, and the interpreter tests skip (the GPU tests run).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the definition of every triton kernel

pytest.importorskip("triton")

from fastddpm.ops import (
    backend_triton,  # noqa: E402
    noise,  # noqa: E402
)
from tests.tolerances import assert_close  # noqa: E402

philox = backend_triton.kernel_module("philox")
interpreter_only = pytest.mark.skipif(
    not backend_triton.interpreted(),
    reason="kernels are compiled for CUDA here; interpreter tests run on CPU",
)

COUNTER_CASES = [
    # (seed, sample_offset, stream): key words both non-zero, a 64-bit seed, a sample index that wraps
    # past 2^32, counters held in device memory
    (0, 0, 0),
    (2**40 + 12345, 2**32 - 2, 7),
    (2**64 - 1, 5, 2**32 + 3),
    (20260, "tensor:11", "tensor:4"),
]


def _counter(value, device):
    if isinstance(value, str):
        return torch.tensor(int(value.split(":")[1]), dtype=torch.int64, device=device)
    return value


def _expected_words(seed, sample_offset, batch, per_sample, stream):
    element = torch.arange(per_sample, dtype=torch.int64).reshape(1, -1)
    sample = (torch.arange(batch, dtype=torch.int64) + int(sample_offset)).reshape(-1, 1) & 0xFFFFFFFF
    stream_word = torch.tensor(int(stream) & 0xFFFFFFFF)
    words = noise.philox4x32(element, sample, stream_word, torch.tensor(0), seed)
    return [w.expand(batch, per_sample) for w in words]


@interpreter_only
@pytest.mark.parametrize("seed, sample_offset, stream", COUNTER_CASES)
def test_raw_words_equal_noise_philox4x32_bit_for_bit(seed, sample_offset, stream):
    batch, per_sample = 3, 37  # 37 elements with 16-element blocks: three blocks, a masked tail
    offset_arg, stream_arg = _counter(sample_offset, "cpu"), _counter(stream, "cpu")
    words = philox.philox_words(seed, offset_arg, batch, per_sample, stream_arg, "cpu", block=16)
    expected = _expected_words(seed, offset_arg, batch, per_sample, stream_arg)
    for index, (actual, wanted) in enumerate(zip(words, expected, strict=True)):
        mismatches = int((actual != wanted).sum())
        assert mismatches == 0, f"philox word r{index}: {mismatches} of {actual.numel()} differ"


@interpreter_only
@pytest.mark.parametrize("seed, sample_offset, stream", COUNTER_CASES)
def test_normals_match_noise_philox_normal(seed, sample_offset, stream):
    offset_arg, stream_arg = _counter(sample_offset, "cpu"), _counter(stream, "cpu")
    actual = philox.normal(seed, offset_arg, 3, (5, 3, 7), stream_arg, "cpu", block=32)
    expected = noise.philox_normal(seed, offset_arg, 3, (5, 3, 7), stream_arg)
    assert actual.dtype == torch.float32
    assert_close(actual, expected, 1e-5, 1e-5, what="in-kernel philox normal vs noise.philox_normal")


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std()))


@interpreter_only
def test_noise_statistics_mean_variance_and_independence():
    per_sample = 8192
    draws = philox.normal(7, 100, 4, (per_sample,), 3, "cpu", block=per_sample)
    next_stream = philox.normal(7, 100, 4, (per_sample,), 4, "cpu", block=per_sample)
    n = draws.numel()
    bound = 5 / n**0.5  # five standard errors of a mean / correlation estimate
    assert abs(float(draws.mean())) < bound, "mean far from 0"
    assert abs(float(draws.var()) - 1) < 5 * (2 / n) ** 0.5, "variance far from 1"
    assert abs(float((draws.abs() > 1.959964).double().mean()) - 0.05) < 5 * (0.05 * 0.95 / n) ** 0.5
    row_bound = 5 / per_sample**0.5
    for b in range(3):
        assert abs(_correlation(draws[b], draws[b + 1])) < row_bound, f"samples {b}, {b + 1} correlated"
    for b in range(4):
        assert abs(_correlation(draws[b], next_stream[b])) < row_bound, (
            f"streams 3, 4 correlated (sample {b})"
        )
    assert abs(_correlation(draws[:, :-1], draws[:, 1:])) < bound, "neighbouring elements correlated"


def test_no_kernel_parameter_is_a_keyword_the_compiled_launch_takes_for_itself():
    # Compiled Triton's launch asserts that no keyword argument is named stream, device or device_type and
    # reads its compile options (num_warps, debug, ...) from the same keywords; the interpreter checks
    # neither. The philox counter was a parameter `stream`, passed by keyword: every kernel with noise
    # would have failed its first launch on a GPU ("stream option is deprecated"), found by binding the GPU
    # tests' launches on the CPU with the compiled JIT's own argument binder.
    import dataclasses

    from triton.backends.nvidia.compiler import CUDAOptions

    taken = {"stream", "device", "device_type"} | {field.name for field in dataclasses.fields(CUDAOptions)}
    kernels = []
    for module in ("philox", "q_sample", "sampler_step", "linear_update", "group_norm"):
        for name, fn in vars(backend_triton.kernel_module(module)).items():
            if name.endswith("_kernel") and hasattr(fn, "arg_names"):
                kernels.append(name)
                assert not taken & set(fn.arg_names), f"{module}.{name}: {sorted(taken & set(fn.arg_names))}"
    assert len(kernels) == 7, kernels


@pytest.mark.gpu
@pytest.mark.parametrize("seed, sample_offset, stream", COUNTER_CASES)
def test_cuda_noise_matches_noise_py_at_cifar_batch(seed, sample_offset, stream):
    offset_arg, stream_arg = _counter(sample_offset, "cuda"), _counter(stream, "cuda")
    batch, shape = 256, (3, 32, 32)
    words = philox.philox_words(seed, offset_arg, batch, 3 * 32 * 32, stream_arg, "cuda")
    expected_words = _expected_words(seed, int(offset_arg), batch, 3 * 32 * 32, int(stream_arg))
    for index, (actual, wanted) in enumerate(zip(words, expected_words, strict=True)):
        assert torch.equal(actual.cpu(), wanted), f"philox word r{index} differs on CUDA"
    actual = philox.normal(seed, offset_arg, batch, shape, stream_arg, "cuda")
    expected = noise.philox_normal(seed, offset_arg, batch, shape, stream_arg, device="cuda")
    assert_close(actual, expected, 1e-5, 1e-5, what="CUDA in-kernel philox normal vs noise.philox_normal")
