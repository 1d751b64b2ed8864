"""kernels/linear_update.py against reference.linear_update, to a few ulps: every state size K = 0..5,
noise from a tensor / in-kernel philox / none, every model-output dtype, both layouts; and the dispatch.

Without CUDA the kernels run under the Triton interpreter: TRITON_INTERPRET=1 is set here, before any
kernel is defined. With CUDA they are compiled, and the interpreter tests skip (the GPU tests run).

Philox noise: the in-kernel draw and noise.philox_normal differ in the last bits of log / cos (measured
here: 62 of 210 normals, by at most 2.4e-7, as tests/kernels/test_philox.py says), so the ulp comparison
feeds the reference the kernel's own draw (kernels/philox.py ``normal``, the same jit code), and the
comparison with noise.philox_normal's noise is to a tolerance.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the definition of every triton kernel

pytest.importorskip("triton")

from fastddpm.kernels.step_columns import LIN_MATRIX, LIN_MAX_STATE, linear_row_width  # noqa: E402

from fastddpm import ops  # noqa: E402
from fastddpm.ops import (
    backend_triton,  # noqa: E402
    noise,  # noqa: E402
    reference,  # noqa: E402
)
from tests.kernels.noise_inputs import step_noise  # noqa: E402
from tests.tolerances import assert_close, ulps_of_scale  # noqa: E402

multistep_kernels = backend_triton.kernel_module("linear_update")
philox_kernels = backend_triton.kernel_module("philox")
interpreter_only = pytest.mark.skipif(
    not backend_triton.interpreted(),
    reason="kernels are compiled for CUDA here; interpreter tests run on CPU",
)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NOISE_MODES = ["tensor", "philox", "none"]
# Odd sizes, C not a power of two, H != W, a masked tail with 16-element blocks; channels_last needs C > 1
# (with C == 1 both layouts are the same memory).
CONTIGUOUS_SHAPES = [(2, 1, 3, 3), (1, 3, 5, 7)]
CHANNELS_LAST_SHAPES = [(1, 3, 5, 7), (2, 3, 2, 3)]


def _inputs(shape, slots, dtype, channels_last, device="cpu", seed=0):
    """(model_output, sample, state, matrix); every coefficient non-zero, so a dropped column shows."""
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(shape, generator=gen)
    model_output = torch.randn(shape, generator=gen).to(dtype)
    state = torch.randn((slots, *shape), generator=gen)
    matrix = torch.randn((slots + 1) * (slots + 3), generator=gen)
    if channels_last:
        sample = sample.to(memory_format=torch.channels_last)
        model_output = model_output.to(memory_format=torch.channels_last)
        state = state.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)  # each slot NHWC-dense
    return tuple(t.to(device) for t in (model_output, sample, state, matrix))


def _kernel_drawn(given, sample):
    """The noise the kernel draws for a PhiloxNoise (the same jit code), else the given noise."""
    if isinstance(given, ops.PhiloxNoise):
        return philox_kernels.normal(
            given.seed, given.sample_offset, sample.shape[0], sample.shape[1:], given.stream, sample.device
        )
    return given


def _noise_py(given, sample):
    return noise.philox_normal(
        given.seed, given.sample_offset, sample.shape[0], sample.shape[1:], given.stream, device=sample.device
    )


# The kernel and reference.linear_update take the same float32 products and sums in the same order, a 16-bit
# output's products rounded at the same places, but in two implementations (Triton, here its interpreter's
# numpy; torch's CPU kernels). Measured bit-identical (max |diff| 0) in every case here under
# ATEN_CPU_CAPABILITY=default, avx2 and avx512 on an Intel Xeon (AVX-512, AMX): the bound is
# LINEAR_UPDATE_ULPS float32 ulps at the output's scale, plus one ulp of a 16-bit model dtype (a product's
# rounding to it landing the other way), without assuming bit-identity. A dropped or misread column is off by
# a whole term, ~1.
LINEAR_UPDATE_ULPS = 4


def assert_same_update(x_next, next_state, expected, dtype, what):
    for actual, wanted, name in ((x_next, expected[0], "x_next"), (next_state, expected[1], "next state")):
        if not wanted.numel():  # K = 0: no state
            continue
        bound = ulps_of_scale(wanted, LINEAR_UPDATE_ULPS)
        if dtype != torch.float32:
            bound += ulps_of_scale(wanted, 1, dtype)
        assert_close(actual, wanted, bound, 0, what=f"{name} of {what}")


def _check(model_output, sample, state, matrix, given, block=None):
    kwargs = {} if block is None else dict(block=block)
    x_next, next_state = multistep_kernels.linear_update(model_output, sample, state, matrix, given, **kwargs)
    expected = reference.linear_update(model_output, sample, state, matrix, _kernel_drawn(given, sample))
    what = f"K={state.shape[0]} {model_output.dtype} noise={type(given).__name__}"
    assert x_next.dtype == next_state.dtype == torch.float32, what
    assert next_state.shape == state.shape, what
    assert_same_update(x_next, next_state, expected, model_output.dtype, what)
    if isinstance(given, ops.PhiloxNoise):
        # Interpreter: measured max |diff| 9.5e-7 (normals off by 2.4e-7, times coefficients up to ~3.5).
        # CUDA (not measured here): test_philox.py's 1e-5 bound on the normals times those coefficients.
        bound = 4e-5 if sample.is_cuda else 2e-6
        with_noise_py = reference.linear_update(model_output, sample, state, matrix, _noise_py(given, sample))
        assert_close(x_next, with_noise_py[0], bound, bound, what=f"x_next of {what} vs noise.py")
        assert_close(next_state, with_noise_py[1], bound, bound, what=f"next state of {what} vs noise.py")
    return x_next, next_state


def _cases():
    """Every (K, noise mode) pair; each noise mode meets every dtype, each K both layouts."""
    for index in range(3 * (LIN_MAX_STATE + 1)):
        slots, noise_mode = index % (LIN_MAX_STATE + 1), NOISE_MODES[index // (LIN_MAX_STATE + 1)]
        dtype = DTYPES[(slots + index // (LIN_MAX_STATE + 1)) % 3]
        channels_last = (slots + index // (LIN_MAX_STATE + 1)) % 2 == 1
        shape = (CHANNELS_LAST_SHAPES if channels_last else CONTIGUOUS_SHAPES)[index % 2]
        layout = "channels_last" if channels_last else "nchw"
        yield pytest.param(
            slots,
            noise_mode,
            dtype,
            channels_last,
            shape,
            id=f"K{slots}-{noise_mode}-{str(dtype)[6:]}-{layout}",
        )


@interpreter_only
@pytest.mark.parametrize("slots, noise_mode, dtype, channels_last, shape", list(_cases()))
def test_linear_update_matches_reference_bit_for_bit(slots, noise_mode, dtype, channels_last, shape):
    model_output, sample, state, matrix = _inputs(shape, slots, dtype, channels_last, seed=slots)
    x_next, next_state = _check(
        model_output, sample, state, matrix, step_noise(noise_mode, shape, "cpu"), block=16
    )
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert x_next.is_contiguous(memory_format=layout)
    assert all(s.is_contiguous(memory_format=layout) for s in next_state.unbind(0))


@interpreter_only
def test_row_read_from_a_device_table_as_the_loop_reads_it():
    # The loop's row: table.index_select(0, step_index)[LIN_MATRIX:], a view at an offset into the table;
    # a column-major table also gives it a stride > 1. A non-dense state (a slice) is copied, not misread.
    slots, shape = 3, (2, 3, 2, 3)
    model_output, sample, state, _ = _inputs(shape, slots, torch.float32, channels_last=False)
    table = torch.randn((linear_row_width(slots), 4), generator=torch.Generator().manual_seed(3)).t()
    step_index = torch.tensor([2])
    row = table.index_select(0, step_index).squeeze(0)[LIN_MATRIX:]
    strided = table[2, LIN_MATRIX:]
    assert strided.stride(0) > 1
    wide_state = torch.randn((slots, *shape[:-1], 2 * shape[-1]))[..., ::2]
    wide_state.copy_(state)
    for matrix in (row, strided):
        _check(model_output, sample, wide_state, matrix, ops.PhiloxNoise(9, 0, step_index.squeeze(0) + 1))


@interpreter_only
def test_ops_dispatch_uses_the_kernel_when_triton_is_named(monkeypatch):
    model_output, sample, state, matrix = _inputs((1, 3, 5, 7), 2, torch.float32, channels_last=False)
    given = ops.PhiloxNoise(4, 1, 2)
    calls = []
    launcher = multistep_kernels.linear_update
    monkeypatch.setattr(multistep_kernels, "linear_update", lambda *a: calls.append(1) or launcher(*a))
    monkeypatch.setenv("FASTDDPM_BACKEND", "auto")  # the interpreter is only for a named triton backend
    assert ops.backend_for("linear_update", model_output, sample, state, matrix, given) == "torch"
    monkeypatch.setenv("FASTDDPM_BACKEND", "triton")
    assert ops.backend_for("linear_update", model_output, sample, state, matrix, given) == "triton"
    x_next, next_state = ops.linear_update(model_output, sample, state, matrix, given)
    assert calls == [1]
    expected = reference.linear_update(model_output, sample, state, matrix, _kernel_drawn(given, sample))
    assert_same_update(x_next, next_state, expected, model_output.dtype, "dispatched")


@interpreter_only
def test_named_triton_backend_says_why_it_cannot_serve(monkeypatch):
    model_output, sample, state, matrix = _inputs((1, 3, 2, 2), 2, torch.float32, channels_last=False)
    monkeypatch.setenv("FASTDDPM_BACKEND", "triton")
    with pytest.raises(ops.BackendUnavailable, match="matrix is not the 15 float32 coefficients of 2 slots"):
        ops.linear_update(model_output, sample, state, matrix[:-1], None)
    too_many = torch.zeros((LIN_MAX_STATE + 1, *sample.shape))
    reasons = backend_triton.why_not_linear_update(model_output, sample, too_many, matrix, None)
    assert reasons == [f"state is not float32 (K, *sample.shape) with K <= {LIN_MAX_STATE}"]
    reasons = backend_triton.why_not_linear_update(model_output, sample.double(), state, matrix, 1.0)
    assert reasons == [
        "sample dtype torch.float64 is not float32 (the sampler state stays float32)",
        "noise of type float (need a tensor, PhiloxNoise or None)",
    ]


def test_linear_update_launcher_rejects_bad_input_naming_the_argument():
    model_output, sample, state, matrix = _inputs((2, 3, 2, 2), 1, torch.float32, channels_last=False)
    launch = multistep_kernels.linear_update
    with pytest.raises(ValueError, match="model_output"):
        launch(model_output[:1], sample, state, matrix, None)
    with pytest.raises(ValueError, match="state"):
        launch(model_output, sample, state.double(), matrix, None)
    with pytest.raises(ValueError, match="matrix must be 8 float32"):
        launch(model_output, sample, state, matrix[:6], None)
    with pytest.raises(ValueError, match="noise"):
        launch(model_output, sample, state, matrix, torch.zeros(2, 3, 2, 2, dtype=torch.float16))


# --------------------------------------------------------------------------------------------------- GPU


# The CPU cases at a real size: compiled without FMA contraction, the kernel should keep to the same ulp
# bound on the GPU (not run on one yet).
@pytest.mark.gpu
@pytest.mark.parametrize("slots, noise_mode, dtype, channels_last, shape", list(_cases()))
def test_cuda_linear_update_matches_reference(slots, noise_mode, dtype, channels_last, shape):
    shape = (255, 3, 32, 32)
    model_output, sample, state, matrix = _inputs(shape, slots, dtype, channels_last, device="cuda")
    _check(model_output, sample, state, matrix, step_noise(noise_mode, shape, "cuda"))
