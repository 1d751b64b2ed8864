"""kernels/sampler_step.py against reference.sampler_step: DDPM and DDIM, every prediction and variance
type, clipping, noise from a tensor / in-kernel philox / none, every model-output dtype, both layouts.

Without CUDA the kernels run under the Triton interpreter: TRITON_INTERPRET=1 is set here, before any
kernel is defined. With CUDA they are compiled, and the interpreter tests skip (the GPU tests run).
"""

import itertools
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the definition of every triton kernel

pytest.importorskip("triton")

from fastddpm.kernels import step_columns  # noqa: E402

from fastddpm import ops  # noqa: E402
from fastddpm.ops import (
    backend_triton,  # noqa: E402
    noise,  # noqa: E402
    reference,  # noqa: E402
)
from fastddpm.schedulers.ddim import ddim_row  # noqa: E402
from fastddpm.schedulers.ddpm import ddpm_row  # noqa: E402
from tests.kernels.noise_inputs import step_noise  # noqa: E402
from tests.tolerances import assert_close, tolerance  # noqa: E402

sampler_step_kernels = backend_triton.kernel_module("sampler_step")
interpreter_only = pytest.mark.skipif(
    not backend_triton.interpreted(),
    reason="kernels are compiled for CUDA here; interpreter tests run on CPU",
)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ALPHAS_CUMPROD = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()
KINDS = ["ddpm", "ddim"]
PREDICTIONS = ["epsilon", "sample", "v_prediction"]
VARIANCES = ["fixed", "learned", "learned_range"]
NOISE_MODES = ["tensor", "philox", "none"]


def _row(kind, variance_type, t=600, prev=500):
    if kind == "ddpm":
        table_variance = "fixed_small" if variance_type == "fixed" else variance_type
        return ddpm_row(ALPHAS_CUMPROD, t, prev, table_variance)
    return ddim_row(ALPHAS_CUMPROD, ALPHAS_CUMPROD[0], t, prev, eta=0.7)


def _inputs(shape, variance_type, dtype, channels_last, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    batch, channels = shape[:2]
    sample = torch.randn(shape, generator=gen)
    model_output = torch.randn(
        (batch, channels * (1 if variance_type == "fixed" else 2), *shape[2:]), generator=gen
    )
    if variance_type == "learned":  # a variance: positive and small
        model_output[:, channels:] = model_output[:, channels:].abs() * 0.01
    elif variance_type == "learned_range":  # an interpolation fraction in [-1, 1]
        model_output[:, channels:] = model_output[:, channels:].clamp(-1, 1)
    model_output = model_output.to(dtype)
    if channels_last:
        sample = sample.to(memory_format=torch.channels_last)
        model_output = model_output.to(memory_format=torch.channels_last)
    return model_output.to(device), sample.to(device)


def _materialised(given, sample):
    if isinstance(given, ops.PhiloxNoise):
        return noise.philox_normal(
            given.seed,
            given.sample_offset,
            sample.shape[0],
            sample.shape[1:],
            given.stream,
            device=sample.device,
        )
    return given


def _check(model_output, sample, coeffs, given, block=None, **options):
    kwargs = {} if block is None else dict(block=block)
    x_prev, x0_hat = sampler_step_kernels.sampler_step(
        model_output, sample, coeffs, given, **options, **kwargs
    )
    expected_prev, expected_x0 = reference.sampler_step(
        model_output, sample, coeffs, _materialised(given, sample), **options
    )
    what = f"sampler_step {options} {model_output.dtype} noise={type(given).__name__}"
    assert x_prev.dtype == expected_prev.dtype == torch.float32, what
    assert x0_hat.dtype == expected_x0.dtype, what
    atol, rtol = tolerance(model_output.dtype)
    assert_close(x_prev, expected_prev, atol, rtol, what=f"x_prev of {what}")
    assert_close(x0_hat, expected_x0, atol, rtol, what=f"x0_hat of {what}")
    return x_prev, x0_hat


def _cases():
    """Every (kind, prediction, variance) triple once, the other options cycled over them."""
    for index, (kind, prediction, variance) in enumerate(itertools.product(KINDS, PREDICTIONS, VARIANCES)):
        yield pytest.param(
            kind,
            prediction,
            variance,
            NOISE_MODES[(index + index // 3) % 3],  # each variance type meets every noise mode
            DTYPES[(index // 3) % 3],
            index % 2 == 1,  # channels_last
            1.0 if (index // 2) % 2 == 0 else None,  # clip_range
            kind == "ddim" and (index // 4) % 2 == 0,  # use_clipped_model_output
            id=f"{kind}-{prediction}-{variance}",
        )


@interpreter_only
@pytest.mark.parametrize(
    "kind, prediction, variance, noise_mode, dtype, channels_last, clip, use_clipped", list(_cases())
)
def test_sampler_step_matches_reference(
    kind, prediction, variance, noise_mode, dtype, channels_last, clip, use_clipped
):
    shape = (3, 5, 4, 3)  # odd batch, C not a power of two, H != W; 60 elements = 3.75 blocks of 16
    model_output, sample = _inputs(shape, variance, dtype, channels_last)
    x_prev, x0_hat = _check(
        model_output,
        sample,
        _row(kind, "fixed" if variance == "fixed" else variance),
        step_noise(noise_mode, shape, "cpu"),
        block=16,
        kind=kind,
        prediction_type=prediction,
        variance_type=variance,
        clip_range=clip,
        use_clipped_model_output=use_clipped,
    )
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert x_prev.is_contiguous(memory_format=layout) and x0_hat.is_contiguous(memory_format=layout)


@interpreter_only
@pytest.mark.parametrize("noise_mode", NOISE_MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_noise_mode_and_dtype_for_the_common_ddpm_step(dtype, noise_mode):
    model_output, sample = _inputs((3, 3, 5, 2), "fixed", dtype, channels_last=False, seed=4)
    _check(
        model_output, sample, _row("ddpm", "fixed"), step_noise(noise_mode, (3, 3, 5, 2), "cpu"), kind="ddpm"
    )


@interpreter_only
def test_last_step_adds_no_noise_and_rows_are_read_from_a_device_table():
    # A column-major table: the row table[:, step] has stride > 1; the kernel must honour it.
    rows = [_row("ddpm", "fixed", t, t - 100) for t in (300, 200, 100)] + [_row("ddpm", "fixed", 0, -1)]
    table = torch.stack(rows, dim=1)
    table[step_columns.SIGMA, 3] = 1.0  # a std the noise would show through: only NOISE_ON keeps it out
    model_output, sample = _inputs((1, 3, 3, 5), "fixed", torch.float32, channels_last=False)
    step_index = torch.tensor(3)
    coeffs = table[:, step_index]
    assert coeffs.stride(0) > 1 and float(coeffs[step_columns.NOISE_ON]) == 0.0  # the flag as written
    given = ops.PhiloxNoise(1, 0, step_index + 1)
    x_prev, _ = _check(model_output, sample, coeffs, given, kind="ddpm")
    # The same kernel without a noise argument: the same operations up to the select that NOISE_ON = 0 makes
    # return the noise-free value, so the same bits (the reference is another implementation: _check above).
    without_noise, _ = sampler_step_kernels.sampler_step(model_output, sample, coeffs, None, kind="ddpm")
    assert torch.equal(x_prev, without_noise)


def test_sampler_step_launcher_rejects_bad_input_naming_the_argument():
    model_output, sample = _inputs((2, 3, 4, 4), "fixed", torch.float32, channels_last=False)
    row = _row("ddpm", "fixed")
    with pytest.raises(ValueError, match="model_output shape"):
        sampler_step_kernels.sampler_step(
            model_output, sample, row, None, kind="ddpm", variance_type="learned"
        )
    with pytest.raises(ValueError, match="coeffs"):
        sampler_step_kernels.sampler_step(model_output, sample, row[:4], None, kind="ddpm")
    with pytest.raises(ValueError, match="thresholding"):
        sampler_step_kernels.sampler_step(
            model_output, sample, row, None, kind="ddpm", thresholding=(0.99, 2.0)
        )


@interpreter_only
def test_thresholding_goes_to_torch_and_explicit_triton_says_why(monkeypatch):
    model_output, sample = _inputs((2, 3, 4, 4), "fixed", torch.float32, channels_last=False)
    row, options = _row("ddpm", "fixed"), dict(kind="ddpm", thresholding=(0.995, 1.5))
    monkeypatch.setenv("FASTDDPM_BACKEND", "triton")
    with pytest.raises(ops.BackendUnavailable, match="dynamic thresholding"):
        ops.sampler_step(model_output, sample, row, None, **options)
    assert ops.backend_for("sampler_step", model_output, sample, row, None, kind="ddpm") == "triton"
    monkeypatch.setenv("FASTDDPM_BACKEND", "auto")
    assert ops.backend_for("sampler_step", model_output, sample, row, None, **options) == "torch"


# --------------------------------------------------------------------------------------------------- GPU


# The CPU cases at a real size (each distinct case is one more kernel compile on the GPU machine).
@pytest.mark.gpu
@pytest.mark.parametrize(
    "kind, prediction, variance, noise_mode, dtype, channels_last, clip, use_clipped", list(_cases())
)
def test_cuda_sampler_step_matches_reference(
    kind, prediction, variance, noise_mode, dtype, channels_last, clip, use_clipped
):
    shape = (256, 3, 32, 32)
    model_output, sample = _inputs(shape, variance, dtype, channels_last, device="cuda")
    _check(
        model_output,
        sample,
        _row(kind, variance).cuda(),
        step_noise(noise_mode, shape, "cuda"),
        kind=kind,
        prediction_type=prediction,
        variance_type=variance,
        clip_range=clip,
        use_clipped_model_output=use_clipped,
    )


@pytest.mark.gpu
def test_cuda_sampler_step_channels_last_bfloat16_with_philox():
    shape = (255, 3, 32, 32)
    model_output, sample = _inputs(shape, "learned_range", torch.bfloat16, channels_last=True, device="cuda")
    _check(
        model_output,
        sample,
        _row("ddpm", "learned_range").cuda(),
        step_noise("philox", shape, "cuda"),
        kind="ddpm",
        variance_type="learned_range",
    )
