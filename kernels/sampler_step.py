"""One fused reverse step (DDPM or DDIM): x0_hat, clipping, the posterior mean and the noise in one pass.

The step's scalars come from one row of a step table (fastddpm/kernels/step_columns.py) that lives on the device,
typically ``table[step_index]`` with a device-resident index, and the philox stream and sample offset may
be 0-d device tensors: the kernel loads them, so one captured CUDA graph replays for every step. The noise is read from a
tensor or drawn in-kernel with the "philox" noise of fastddpm/ops/noise.py.

The arithmetic follows reference.sampler_step operation by operation, including torch's type promotion
with a float16 / bfloat16 model output (the state itself stays float32): ``coefficient * half_tensor``
rounds the 0-d float32 coefficient to half first (CUDA always; CPU when the coefficient is the first
operand, as everywhere in the reference except the two learned_range log-variance products), computes in
float32 and rounds the product to half. The kernel rounds at the same places (``rounded``) and divides
with IEEE division and square root (``div_rn``, ``sqrt_rn``) and no FMA contraction (EXACT_FLOAT32), so
fixed-variance steps agree with the reference to the last bit or two, under the interpreter and compiled
alike. What a GPU does not keep bit for bit: learned variances take ``tl.exp``, which compiles to
``ex2.approx`` (about 2 ulp from torch's expf), and in-kernel Philox noise goes through libdevice's log /
cos (see ops/noise.py); those steps agree with the reference within float32 tolerances there.

Dynamic thresholding is not fused (see fastddpm/ops/backend_triton.py): the launcher refuses it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import EXACT_FLOAT32, FLOAT_DTYPES, is_channels_last, memory_format_of, rounded
from .philox import sample_normal, step_noise_arguments
from .step_columns import (
    COEF_X0,
    COEF_XT,
    LOG_VAR_MAX,
    LOG_VAR_MIN,
    NOISE_ON,
    NUM_COLUMNS,
    SIGMA,
    SQRT_ABAR,
    SQRT_ONE_MINUS_ABAR,
)

PREDICTIONS = {"epsilon": 0, "sample": 1, "v_prediction": 2}
VARIANCES = {"fixed": 0, "learned": 1, "learned_range": 2}


@triton.jit
def _coefficient(coeffs_ptr, column: tl.constexpr, stride):
    # float32, as the reference's 0-d float32 coefficients; products with a reduced-precision tensor use
    # the coefficient rounded to that dtype (``rounded``), as torch does.
    return tl.load(coeffs_ptr + column * stride)


@triton.jit(do_not_specialize=["seed", "sample_offset", "noise_stream", "clip_range"])
def _sampler_step_kernel(
    model_output_ptr,  # (B, C or 2C, ...) network output, fp32 / fp16 / bf16, the sample's layout
    sample_ptr,  # (B, C, ...) float32 x_t
    coeffs_ptr,  # float32 step-table row (NUM_COLUMNS values, stride coeffs_stride)
    noise_ptr,  # float32 noise of the sample's shape and layout, when NOISE == NOISE_TENSOR
    x_prev_ptr,  # float32 output x_{t-1}
    x0_ptr,  # output x0_hat: the model dtype for prediction "sample", else float32
    seed,  # NOISE_PHILOX: 64-bit key
    sample_offset,  # NOISE_PHILOX: sample index of batch row 0, an int or a pointer to a 0-d int64
    noise_stream,  # NOISE_PHILOX: stream counter, an int or a pointer to a 0-d int64
    clip_range,  # CLIP: x0_hat is clamped to [-clip_range, clip_range]
    coeffs_stride,  # element stride of the row
    per_sample,  # C * spatial elements of the sample
    channels,  # C
    spatial,  # elements per channel (H * W)
    blocks_per_sample,  # programs per sample
    DDIM: tl.constexpr,  # kind: DDIM (else DDPM)
    PREDICTION: tl.constexpr,  # 0 epsilon, 1 sample, 2 v_prediction
    VARIANCE: tl.constexpr,  # 0 fixed (sigma from the table), 1 learned, 2 learned_range
    CLIP: tl.constexpr,  # clamp x0_hat
    USE_CLIPPED: tl.constexpr,  # DDIM: recompute eps from the clipped x0_hat
    NOISE: tl.constexpr,  # 0 none, 1 tensor, 2 philox
    OFFSET_IN_MEMORY: tl.constexpr,  # sample_offset is a device pointer
    STREAM_IN_MEMORY: tl.constexpr,  # noise_stream is a device pointer
    CHANNELS_LAST: tl.constexpr,  # all tensors are NHWC-dense
    BLOCK: tl.constexpr,  # elements per program
):
    # Bytes moved per element, float32: reads model output 4 (8 with learned variances) + x_t 4 (+ noise 4
    # when given as a tensor), writes x_prev 4 + x0_hat 4; 16 to 24 bytes in all.
    MODEL_DTYPE: tl.constexpr = model_output_ptr.dtype.element_ty
    X0_REDUCED: tl.constexpr = PREDICTION == 1  # x0_hat is the model output itself: the model dtype
    EPS_REDUCED: tl.constexpr = PREDICTION == 0 and not (DDIM and USE_CLIPPED)
    program = tl.program_id(0)
    b = program // blocks_per_sample
    position = (program % blocks_per_sample) * BLOCK + tl.arange(0, BLOCK)
    mask = position < per_sample
    offset = b.to(tl.int64) * per_sample + position

    if VARIANCE == 0:
        model_offset = offset
    else:
        # learned variances: the model output has 2C channels, the variance is the second half.
        if CHANNELS_LAST:
            model_offset = b.to(tl.int64) * 2 * per_sample + position + (position // channels) * channels
            variance_offset = model_offset + channels
        else:
            model_offset = b.to(tl.int64) * 2 * per_sample + position
            variance_offset = model_offset + per_sample

    sqrt_abar = _coefficient(coeffs_ptr, 0, coeffs_stride)
    sqrt_one_minus_abar = _coefficient(coeffs_ptr, 1, coeffs_stride)
    coef_x0 = _coefficient(coeffs_ptr, 2, coeffs_stride)
    coef_xt = _coefficient(coeffs_ptr, 3, coeffs_stride)
    noise_on = tl.load(coeffs_ptr + 7 * coeffs_stride)
    # The coefficients as torch's `coefficient * half_tensor` sees them (identity for float32 models).
    sqrt_abar_m = rounded(sqrt_abar, MODEL_DTYPE)
    sqrt_one_minus_abar_m = rounded(sqrt_one_minus_abar, MODEL_DTYPE)

    model = tl.load(model_output_ptr + model_offset, mask=mask, other=0.0).to(tl.float32)
    x_t = tl.load(sample_ptr + offset, mask=mask, other=0.0)

    if PREDICTION == 0:
        x0 = tl.div_rn(x_t - rounded(sqrt_one_minus_abar_m * model, MODEL_DTYPE), sqrt_abar)
        eps = model
    elif PREDICTION == 1:
        x0 = model
        eps = tl.div_rn(x_t - rounded(sqrt_abar_m * x0, MODEL_DTYPE), sqrt_one_minus_abar)
    else:
        x0 = sqrt_abar * x_t - rounded(sqrt_one_minus_abar_m * model, MODEL_DTYPE)
        eps = rounded(sqrt_abar_m * model, MODEL_DTYPE) + sqrt_one_minus_abar * x_t

    if CLIP:
        x0 = tl.minimum(tl.maximum(x0, -clip_range), clip_range)
        if X0_REDUCED:
            x0 = rounded(x0, MODEL_DTYPE)

    if X0_REDUCED:
        x0_term = rounded(rounded(coef_x0, MODEL_DTYPE) * x0, MODEL_DTYPE)
    else:
        x0_term = coef_x0 * x0
    if DDIM:
        if USE_CLIPPED:
            if X0_REDUCED:
                eps = tl.div_rn(x_t - rounded(sqrt_abar_m * x0, MODEL_DTYPE), sqrt_one_minus_abar)
            else:
                eps = tl.div_rn(x_t - sqrt_abar * x0, sqrt_one_minus_abar)
        if EPS_REDUCED:
            x_prev = x0_term + rounded(rounded(coef_xt, MODEL_DTYPE) * eps, MODEL_DTYPE)
        else:
            x_prev = x0_term + coef_xt * eps
    else:
        x_prev = x0_term + coef_xt * x_t

    if NOISE != 0:
        if NOISE == 1:
            z = tl.load(noise_ptr + offset, mask=mask, other=0.0)
        else:
            if CHANNELS_LAST:  # the noise is defined on the NCHW index
                element = (position % channels) * spatial + position // channels
            else:
                element = position
            z = sample_normal(
                seed, sample_offset, noise_stream, b, element, OFFSET_IN_MEMORY, STREAM_IN_MEMORY
            )
        if VARIANCE == 0:
            std = _coefficient(coeffs_ptr, 4, coeffs_stride)
        else:
            predicted = tl.load(model_output_ptr + variance_offset, mask=mask, other=1.0).to(tl.float32)
            if VARIANCE == 1:
                std = rounded(tl.sqrt_rn(predicted), MODEL_DTYPE)
            else:
                log_var_min = _coefficient(coeffs_ptr, 5, coeffs_stride)
                log_var_max = _coefficient(coeffs_ptr, 6, coeffs_stride)
                frac = rounded(rounded(predicted + 1.0, MODEL_DTYPE) / 2.0, MODEL_DTYPE)
                log_var = rounded(
                    rounded(frac * log_var_max, MODEL_DTYPE)
                    + rounded(rounded(1.0 - frac, MODEL_DTYPE) * log_var_min, MODEL_DTYPE),
                    MODEL_DTYPE,
                )
                std = rounded(tl.exp(rounded(0.5 * log_var, MODEL_DTYPE)), MODEL_DTYPE)
        x_prev = tl.where(noise_on > 0, x_prev + std * z, x_prev)

    tl.store(x_prev_ptr + offset, x_prev, mask=mask)
    tl.store(x0_ptr + offset, x0.to(x0_ptr.dtype.element_ty), mask=mask)


def _check_columns() -> None:
    # The kernel indexes the row by literal column numbers (constexpr); keep them in step with the table.
    columns = (SQRT_ABAR, SQRT_ONE_MINUS_ABAR, COEF_X0, COEF_XT, SIGMA, LOG_VAR_MIN, LOG_VAR_MAX, NOISE_ON)
    if columns != tuple(range(8)) or NUM_COLUMNS != 8:
        raise RuntimeError("kernels/sampler_step.py: kernels/step_columns.py changed; update the kernel")


_check_columns()


def sampler_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    coeffs: torch.Tensor,
    noise,
    *,
    kind: str,
    prediction_type: str = "epsilon",
    variance_type: str = "fixed",
    clip_range: float | None = None,
    thresholding: tuple[float, float] | None = None,
    use_clipped_model_output: bool = False,
    block: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_prev, x0_hat) as reference.sampler_step; ``noise`` is a float32 tensor, an ops.PhiloxNoise or None.

    x_prev is float32 and x0_hat float32 (the model dtype for prediction "sample"), both in the sample's
    memory format.
    """
    if thresholding is not None:
        raise ValueError("kernels/sampler_step.py: dynamic thresholding is served by the torch backend")
    if kind not in ("ddpm", "ddim"):
        raise ValueError(f"kernels/sampler_step.py: kind {kind!r} is not one of ddpm, ddim")
    if prediction_type not in PREDICTIONS:
        raise ValueError(
            f"kernels/sampler_step.py: prediction_type {prediction_type!r} is not one of {list(PREDICTIONS)}"
        )
    if variance_type not in VARIANCES:
        raise ValueError(
            f"kernels/sampler_step.py: variance_type {variance_type!r} is not one of {list(VARIANCES)}"
        )
    if sample.dtype != torch.float32 or sample.dim() < 2:
        raise ValueError(f"kernels/sampler_step.py: sample must be float32 (B, C, ...), got {sample.dtype}")
    if model_output.dtype not in FLOAT_DTYPES:
        raise ValueError(f"kernels/sampler_step.py: model_output dtype {model_output.dtype} is not supported")
    split = variance_type != "fixed"
    batch, channels = sample.shape[:2]
    expected = (batch, channels * (2 if split else 1), *sample.shape[2:])
    if model_output.shape != expected:
        raise ValueError(
            f"kernels/sampler_step.py: model_output shape {tuple(model_output.shape)} should be {expected}"
        )
    if coeffs.shape != (NUM_COLUMNS,) or coeffs.dtype != torch.float32 or coeffs.device != sample.device:
        raise ValueError(
            f"kernels/sampler_step.py: coeffs must be a float32 row of {NUM_COLUMNS} on {sample.device}"
        )

    memory_format = memory_format_of(sample)
    sample = sample.contiguous(memory_format=memory_format)
    model_output = model_output.contiguous(memory_format=memory_format)
    noise_mode, noise_tensor, philox = step_noise_arguments(
        noise, sample, memory_format, "kernels/sampler_step.py"
    )

    x_prev = torch.empty_like(sample, memory_format=memory_format)
    x0_dtype = model_output.dtype if prediction_type == "sample" else torch.float32
    x0_hat = torch.empty_like(sample, dtype=x0_dtype, memory_format=memory_format)
    per_sample = sample[0].numel() if batch else 0
    if per_sample == 0:
        return x_prev, x0_hat
    blocks_per_sample = triton.cdiv(per_sample, block)
    _sampler_step_kernel[(batch * blocks_per_sample,)](
        model_output,
        sample,
        coeffs,
        noise_tensor,
        x_prev,
        x0_hat,
        clip_range=float(clip_range) if clip_range is not None else 0.0,
        coeffs_stride=coeffs.stride(0),
        per_sample=per_sample,
        channels=channels,
        spatial=per_sample // channels,
        blocks_per_sample=blocks_per_sample,
        DDIM=kind == "ddim",
        PREDICTION=PREDICTIONS[prediction_type],
        VARIANCE=VARIANCES[variance_type],
        CLIP=clip_range is not None,
        USE_CLIPPED=bool(use_clipped_model_output),
        NOISE=noise_mode,
        CHANNELS_LAST=is_channels_last(sample),
        BLOCK=block,
        **philox,
        **EXACT_FLOAT32,
    )
    return x_prev, x0_hat
