"""The triton backend of ops: the fused kernels of kernels/ (fastddpm.kernels), and why they cannot serve.

Triton is imported only when a ``why_not_*`` check or an op needs it, so ``import fastddpm`` works
without triton. The kernels run on CUDA tensors, or on CPU tensors under the Triton interpreter
(TRITON_INTERPRET=1 set before the kernels are imported). The interpreter is orders of magnitude slower
than torch, so it serves only when FASTDDPM_BACKEND=triton names this backend explicitly: under
FASTDDPM_BACKEND=auto a call on CPU tensors always goes on to the torch backend.

Dynamic thresholding is not fused: it needs a per-sample quantile (a sort or a selection over each
sample), which a second kernel would only re-implement torch.quantile for a rarely used option; such calls
are refused here and served by the torch backend.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from types import ModuleType

import torch

from fastddpm import ops
from fastddpm.kernels.step_columns import LIN_MAX_STATE, NUM_COLUMNS
from fastddpm.ops import PhiloxNoise, invariance

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_KINDS = ("ddpm", "ddim")
_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
_VARIANCE_TYPES = ("fixed", "learned", "learned_range")
_triton_problem: list[str] = []  # filled once: why triton cannot be imported (empty: it can)
_triton_checked = False


def _kernels() -> ModuleType:
    """fastddpm.kernels.common, which imports triton (fastddpm/__init__.py makes fastddpm.kernels importable
    from a source checkout that was not pip-installed)."""
    return importlib.import_module("fastddpm.kernels.common")


def kernel_module(name: str) -> ModuleType:
    """One op's kernel module, fastddpm.kernels.<name> (tests and benchmarks call its launcher directly)."""
    _kernels()
    return importlib.import_module(f"fastddpm.kernels.{name}")


def interpreted() -> bool:
    """Whether the kernels were defined under the Triton interpreter (TRITON_INTERPRET=1 at import)."""
    return _kernels().INTERPRETED


def _triton_reasons() -> list[str]:
    global _triton_checked
    if not _triton_checked:
        _triton_checked = True
        if importlib.util.find_spec("triton") is None:
            _triton_problem.append("triton is not installed")
        else:
            try:
                _kernels()
            except Exception as exc:  # a broken triton install is a reason, not a crash
                _triton_problem.append(f"triton kernels not importable: {type(exc).__name__}: {exc}")
    return list(_triton_problem)


def _device_reasons(tensors: list[torch.Tensor]) -> list[str]:
    """Where the kernels can run: CUDA compiled, or (only when named explicitly) the interpreter."""
    reasons = []
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        reasons.append(f"tensors on different devices ({', '.join(sorted(str(d) for d in devices))})")
    in_interpreter = interpreted()
    explicit = ops.selected_backends() == ("triton",)
    for device in sorted(devices, key=str):
        if device.type == "cuda" and not in_interpreter:
            continue
        if device.type not in ("cuda", "cpu"):
            reasons.append(f"{device.type} tensors are not supported")
        elif not in_interpreter:
            reasons.append("CPU tensors need TRITON_INTERPRET=1 set before the kernels are imported")
        elif not explicit:
            reasons.append("interpreter is for tests; set FASTDDPM_BACKEND=triton")
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        reasons.append("inputs require grad (the kernels have no backward)")
    return reasons


def _dtype_reason(name: str, tensor: torch.Tensor) -> list[str]:
    if tensor.dtype in _FLOAT_DTYPES:
        return []
    return [f"{name} dtype {tensor.dtype} is not float32/float16/bfloat16"]


def _philox_reasons(noise: PhiloxNoise) -> tuple[list[str], list[torch.Tensor]]:
    """Reasons the descriptor cannot be drawn in-kernel, and its counters that live in device memory."""
    reasons, in_memory = [], []
    if not 0 <= noise.seed < 2**64:
        reasons.append("philox seed outside [0, 2**64)")
    for name in ("sample_offset", "stream"):
        value = getattr(noise, name)
        if isinstance(value, torch.Tensor):
            in_memory.append(value)
            if value.numel() != 1 or value.dtype != torch.int64:
                reasons.append(f"philox {name} tensor is not a one-element int64")
    return reasons, in_memory


def _step_noise_reasons(noise, sample: torch.Tensor) -> tuple[list[str], list[torch.Tensor]]:
    """A sampler step's optional noise (float32 tensor of the sample's shape, PhiloxNoise or None): the
    reasons it cannot be served, and the tensors it reads on the device."""
    if isinstance(noise, PhiloxNoise):
        return _philox_reasons(noise)
    if isinstance(noise, torch.Tensor):
        bad = noise.shape != sample.shape or noise.dtype != torch.float32
        return (["noise is not float32 of the sample's shape"] if bad else []), [noise]
    if noise is not None:
        return [f"noise of type {type(noise).__name__} (need a tensor, PhiloxNoise or None)"], []
    return [], []


def _too_large(per_sample: int) -> list[str]:
    return [f"{per_sample} elements per sample overflow the 32-bit counters"] if per_sample >= 2**31 else []


# ---------------------------------------------------------------------------------------------- q_sample


def why_not_q_sample(x0, timesteps, alphas_cumprod, noise) -> list[str]:
    reasons = _triton_reasons()
    if reasons:
        return reasons
    reasons = _dtype_reason("x0", x0)
    if x0.dim() < 1 or timesteps.shape != x0.shape[:1] or timesteps.dtype.is_floating_point:
        reasons.append("timesteps is not an integer tensor of shape (B,)")
    if alphas_cumprod.dim() != 1 or not alphas_cumprod.dtype.is_floating_point:
        reasons.append("alphas_cumprod is not a 1-D float tensor")
    on_device = [x0]
    if isinstance(noise, PhiloxNoise):
        philox_reasons, stream = _philox_reasons(noise)
        reasons += philox_reasons
        on_device += stream
    elif isinstance(noise, torch.Tensor):
        if noise.shape != x0.shape or noise.dtype != x0.dtype:
            reasons.append("noise differs from x0 in shape or dtype")
        on_device.append(noise)
    else:
        reasons.append(f"noise of type {type(noise).__name__} (need a tensor or PhiloxNoise)")
    if x0.dim() >= 1 and x0.shape[0]:
        reasons += _too_large(x0[0].numel())
    return reasons + _device_reasons(on_device)


def _on_device_of(tensor: torch.Tensor):
    """Launch on the tensor's GPU: triton launches on the current CUDA device, which may be another one."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def q_sample(x0, timesteps, alphas_cumprod, noise):
    with _on_device_of(x0):
        return kernel_module("q_sample").q_sample(x0, timesteps, alphas_cumprod, noise)


# ------------------------------------------------------------------------------------------ sampler_step


def why_not_sampler_step(
    model_output,
    sample,
    coeffs,
    noise,
    *,
    kind,
    prediction_type="epsilon",
    variance_type="fixed",
    clip_range=None,
    thresholding=None,
    use_clipped_model_output=False,
) -> list[str]:
    reasons = _triton_reasons()
    if reasons:
        return reasons
    if thresholding is not None:
        reasons.append("dynamic thresholding needs a per-sample quantile: the torch backend serves it")
    if kind not in _KINDS:
        reasons.append(f"kind {kind!r} is not one of {', '.join(_KINDS)}")
    if prediction_type not in _PREDICTION_TYPES:
        reasons.append(f"prediction_type {prediction_type!r} is not one of {', '.join(_PREDICTION_TYPES)}")
    if variance_type not in _VARIANCE_TYPES:
        reasons.append(f"variance_type {variance_type!r} is not one of {', '.join(_VARIANCE_TYPES)}")
    if sample.dtype != torch.float32:
        reasons.append(f"sample dtype {sample.dtype} is not float32 (the sampler state stays float32)")
    reasons += _dtype_reason("model_output", model_output)
    if sample.dim() < 2:
        reasons.append("sample is not (B, C, ...)")
    else:
        channels = sample.shape[1] * (2 if variance_type in ("learned", "learned_range") else 1)
        if model_output.shape != (sample.shape[0], channels, *sample.shape[2:]):
            reasons.append(
                f"model_output shape {tuple(model_output.shape)} does not fit sample and {variance_type}"
            )
        if sample.shape[0]:
            reasons += _too_large(sample[0].numel() * 2)
    if coeffs.shape != (NUM_COLUMNS,) or coeffs.dtype != torch.float32:
        reasons.append(f"coeffs is not a float32 row of {NUM_COLUMNS} step-table columns")
    on_device = [model_output, sample, coeffs]
    noise_reasons, noise_tensors = _step_noise_reasons(noise, sample)
    return reasons + noise_reasons + _device_reasons(on_device + noise_tensors)


def sampler_step(model_output, sample, coeffs, noise, **options):
    with _on_device_of(sample):
        return kernel_module("sampler_step").sampler_step(model_output, sample, coeffs, noise, **options)


# -------------------------------------------------------------------------------------- linear_update


def why_not_linear_update(model_output, sample, state, matrix, noise) -> list[str]:
    reasons = _triton_reasons()
    if reasons:
        return reasons
    if sample.dtype != torch.float32:
        reasons.append(f"sample dtype {sample.dtype} is not float32 (the sampler state stays float32)")
    reasons += _dtype_reason("model_output", model_output)
    if sample.dim() < 2:
        reasons.append("sample is not (B, C, ...)")
    elif sample.shape[0]:
        reasons += _too_large(sample[0].numel())
    if model_output.shape != sample.shape:
        reasons.append(f"model_output shape {tuple(model_output.shape)} is not the sample's")
    slots = state.shape[0] if state.dim() else -1
    if state.dtype != torch.float32 or state.shape[1:] != sample.shape or not 0 <= slots <= LIN_MAX_STATE:
        reasons.append(f"state is not float32 (K, *sample.shape) with K <= {LIN_MAX_STATE}")
    elif matrix.shape != ((slots + 1) * (slots + 3),) or matrix.dtype != torch.float32:
        reasons.append(f"matrix is not the {(slots + 1) * (slots + 3)} float32 coefficients of {slots} slots")
    on_device = [model_output, sample, state, matrix]
    noise_reasons, noise_tensors = _step_noise_reasons(noise, sample)
    return reasons + noise_reasons + _device_reasons(on_device + noise_tensors)


def linear_update(model_output, sample, state, matrix, noise):
    with _on_device_of(sample):
        return kernel_module("linear_update").linear_update(model_output, sample, state, matrix, noise)


# -------------------------------------------------------------------------------------------- group_norm


def why_not_group_norm(
    x, num_groups, weight, bias, eps, *, add=None, scale=None, shift=None, silu=False
) -> list[str]:
    reasons = _triton_reasons()
    if reasons:
        return reasons
    reasons = _dtype_reason("x", x)
    if x.dim() < 2:
        return reasons + ["x is not (N, C, ...)"]
    batch, channels = x.shape[:2]
    if num_groups <= 0 or channels % num_groups:
        reasons.append(f"{channels} channels do not split into {num_groups} groups")
    on_device = [x]
    for name, param, shape in (
        ("weight", weight, (channels,)),
        ("bias", bias, (channels,)),
        ("add", add, (batch, channels)),
        ("scale", scale, (batch, channels)),
        ("shift", shift, (batch, channels)),
    ):
        if param is not None:
            on_device.append(param)
            if param.shape != shape or not param.dtype.is_floating_point:
                reasons.append(f"{name} is not a float tensor of shape {shape}")
    if (scale is None) != (shift is None):
        reasons.append("scale and shift come together")
    if batch and num_groups > 0:
        reasons += _too_large(x[0].numel())
    return reasons + _device_reasons(on_device)


def group_norm(x, num_groups, weight, bias, eps, *, add=None, scale=None, shift=None, silu=False):
    if torch.compiler.is_compiling():  # torch.compile sees the launch as one opaque op (below)
        return torch.ops.fastddpm_triton.group_norm(x, num_groups, weight, bias, eps, add, scale, shift, silu)
    return _launch_group_norm(x, num_groups, weight, bias, eps, add, scale, shift, silu)


def _launch_group_norm(x, num_groups, weight, bias, eps, add, scale, shift, silu):
    # Batch-invariant mode: the kernel and its chunks are chosen by the group's size alone.
    invariant = invariance.enabled() and invariance.uses_triton(x)
    with _on_device_of(x):
        return kernel_module("group_norm").group_norm(
            x, num_groups, weight, bias, eps, add=add, scale=scale, shift=shift, silu=silu,
            batch_invariant=invariant,
        )  # fmt: skip


def why_not_batch_invariant(x: torch.Tensor) -> list[str]:
    """Why kernels/conv_rows.py cannot serve the batch-invariant layers for input x. CPU tensors under the
    interpreter are served: FASTDDPM_BATCH_INVARIANT=triton, which leads here, is an explicit request."""
    reasons = _triton_reasons()
    if reasons:
        return reasons
    if x.device.type == "cuda" and not interpreted():
        return []
    if x.device.type == "cpu" and interpreted():
        return []
    return [
        f"{x.device.type} tensors need CUDA, or the CPU with TRITON_INTERPRET=1 set before the kernels are imported"
    ]


def conv2d_rows(x, weight, bias, residual, kernel, stride, padding) -> torch.Tensor:
    """kernels/conv_rows.py's batch-invariant convolution (weight from its pack_weight)."""
    with _on_device_of(x):
        return kernel_module("conv_rows").conv2d(x, weight, bias, residual, kernel, stride, padding)


def linear_rows(x, weight, bias, residual=None, input_silu=False, divisor=1.0) -> torch.Tensor:
    """kernels/conv_rows.py's batch-invariant linear layer (weight from its pack_weight)."""
    with _on_device_of(x):
        return kernel_module("conv_rows").linear(x, weight, bias, residual, input_silu, divisor)


def attention_rows(q, k, v, scale) -> torch.Tensor:
    """kernels/attention_rows.py's batch-invariant attention over (B, heads, L, D) views."""
    with _on_device_of(q):
        return kernel_module("attention_rows").attention(q, k, v, scale)


# torch.compile(fullgraph=True) cannot trace a launch (it imports the kernel module and enters
# torch.cuda.device), so a compiled U-Net calls the launcher as a custom op whose fake says the output's
# shape and layout. Eager calls skip it: a custom op's dispatch costs host time on every one of the
# U-Net's ~30 group_norm calls.
@torch.library.custom_op("fastddpm_triton::group_norm", mutates_args=())
def _group_norm_op(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    add: torch.Tensor | None,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    silu: bool,
) -> torch.Tensor:
    return _launch_group_norm(x, num_groups, weight, bias, eps, add, scale, shift, silu)


@_group_norm_op.register_fake
def _(x, num_groups, weight, bias, eps, add, scale, shift, silu):
    # the launcher's output: x's dtype and shape, NHWC when x is NHWC-dense (kernels/common.memory_format_of)
    nhwc = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.empty_like(x, memory_format=torch.channels_last if nhwc else torch.contiguous_format)
