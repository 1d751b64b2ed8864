"""The ext backend of ops: the C++/CUDA extension fastddpm._C, reached as torch.ops.fastddpm.*.

Importing this module works without the extension (a source checkout, FASTDDPM_NO_EXT=1): every
``why_not_*`` then says "not built". When fastddpm._C is there, importing this module also registers the
ops' fake implementations, which torch.compile and CUDA graph capture need to trace through the ops
(csrc/fastddpm_ops.cpp names this module as the place where they live).
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import torch

OPS = ("group_norm", "attention")  # the ops with a CPU and a CUDA kernel
# Used directly by fastddpm.models (convolutions, matrix products) and fastddpm.ops.noise (Box-Muller), not
# through ops' dispatch.
CPU_ONLY_OPS = ("winograd_conv3x3", "pack_matmul_weight", "matmul_rows", "box_muller")
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 512  # csrc/attention_args.h kMaxHeadDim
# fastddpm._C.cpu_capability (what setup.py compiled the CPU kernels for) against what torch detects here.
_CPU_CAPABILITY_RANK = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}

# CPU group_norm: measured faster than torch's group_norm + silu at every cifar10-32 U-Net shape, so no
# shape is refused. Measured 2026-11-29 on the 2-core CI machine (AVX-512 CPU; fastddpm._C built for AVX512,
# as torch's own kernels), float32, weight + bias + SiLU, 32 groups, 10th-percentile time of 100-400 calls
# interleaved with torch's (other jobs shared the machine, load average ~6):
#
#     shape              1 thread: ext / torch     2 threads: ext / torch
#     (1, 128, 32, 32)    123 / 168 us  1.37x       86 / 115 us  1.34x
#     (1, 256, 16, 16)     72 /  95 us  1.32x       38 /  47 us  1.23x
#     (1, 256,  8,  8)     24 /  29 us  1.17x       17 /  27 us  1.54x
#     (1, 256,  4,  4)     13 /  16 us  1.23x       13 /  16 us  1.23x
#     (8, 128, 32, 32)   1963 / 3182 us 1.62x     2844 / 15415 us (noisy)
#     (8, 256, 16, 16)    888 / 1506 us 1.70x      474 / 632 us  1.33x
#     (8, 256,  8,  8)    243 / 279 us  1.15x      102 / 108 us  1.06x
#     (8, 256,  4,  4)     55 /  67 us  1.21x       43 /  47 us  1.08x
#
# bfloat16, 1 thread: 1.01x - 1.31x at the same shapes. Before the AVX512 build and the OpenMP flag the
# AVX2 kernel lost at most shapes (0.52x - 0.96x): those are the choices that made it win.
# Should a shape lose on another machine, list it here: (N, C, H, W) with 32 groups, NCHW.
_CPU_GROUP_NORM_SLOWER: frozenset[tuple[int, int, int, int]] = frozenset()

# CPU attention: refused in favour of torch's SDPA (a flash-style kernel on oneDNN/MKL GEMMs). Measured
# 2026-11-29 on the same machine, float32, 1 thread, best of 20: this kernel (broadcast FMAs, ~14 GFLOP/s)
# against SDPA (~110 GFLOP/s):
#     (1, 1, 256, 256)   5.05 ms vs 0.61 ms
#     (1, 1, 256, 512)   9.44 ms vs 1.59 ms
#     (1, 1, 256,  64)   1.01 ms vs 0.24 ms
# (bfloat16, 2 threads, (1, 1, 256, 512): 26.5 ms vs 6.5 ms.) The kernel stays for FASTDDPM_BACKEND=ext and
# as the CPU twin the tests check the op's meaning with.
_CPU_ATTENTION_REFUSAL = (
    "attention: torch's SDPA was measured 4-8x faster than this CPU kernel (see backend_ext.py); "
    "set FASTDDPM_BACKEND=ext to use it anyway"
)

# The CUDA kernels were written and compiled (nvcc 13.0, sm_90) on a machine without a GPU; they have never
# run. Until bench/gpu_check.sh's `pytest -m gpu` passes on a GPU, "auto" does not pick them (a kernel that
# was never run must not silently serve the U-Net); FASTDDPM_BACKEND=ext and the GPU tests still reach
# them. Set to True in the commit that records a passing GPU run.
CUDA_KERNELS_RUN_ON_A_GPU = False
_CUDA_NOT_YET_RUN = (
    "the CUDA kernels of fastddpm._C have not yet passed the GPU tests (compiled, not run); "
    "FASTDDPM_BACKEND=ext uses them anyway"
)

# CUDA attention: a SIMT kernel (no tensor cores) against torch's SDPA (flash / cuDNN kernels), so it is
# not assumed faster anywhere. Under "auto" it serves a CUDA call only where it was measured faster, on
# this GPU, at this shape and dtype: the first such call times both (CUDA events, median of
# _GATE_TIMED_CALLS after _GATE_WARMUP_CALLS), the answer is kept per (device, shapes, dtype), and the
# kernel must win by _GATE_MARGIN. No measurement can run during CUDA graph capture or torch.compile
# tracing; there the gate stays closed until an eager call measured it (the pipeline's warm-up is eager).
_GATE_WARMUP_CALLS = 3
_GATE_TIMED_CALLS = 10
_GATE_MARGIN = 1.05  # SDPA time / kernel time must exceed this: a tie is not worth a second code path
_cuda_attention_verdicts: dict[tuple, str | None] = {}  # key -> refusal reason, None: measured faster

_extension: ModuleType | None = None
_load_error: str | None = None
_fakes_registered = False


def _load() -> ModuleType | None:
    """fastddpm._C, imported once; None (and _load_error says why) when it is not built or fails to load."""
    global _extension, _load_error
    if _extension is None and _load_error is None:
        try:
            _extension = importlib.import_module("fastddpm._C")
        except ImportError as exc:
            _load_error = (
                f"fastddpm._C is not built ({exc}); build it with `pip install -e .` or .ci/build_ext.sh"
            )
        else:
            _register_fakes()
    return _extension


def is_built() -> bool:
    return _load() is not None


def ops_with_cuda_kernels() -> list[str]:
    """The ops for which the loaded library registered a CUDA kernel (asks torch's dispatcher, not a flag)."""
    if _load() is None:
        return []
    return [op for op in OPS if torch._C._dispatch_has_kernel_for_dispatch_key(f"fastddpm::{op}", "CUDA")]


def cuda_kernels_built() -> bool:
    """Whether the extension is built with a CUDA kernel for every op."""
    return len(ops_with_cuda_kernels()) == len(OPS)


def _result_memory_format(x: torch.Tensor) -> torch.memory_format:
    # The kernels' rule (csrc/group_norm_args.h is_channels_last_input): channels-last stays channels-last,
    # everything else comes back NCHW-contiguous.
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _register_fakes() -> None:
    global _fakes_registered
    if _fakes_registered:
        return

    @torch.library.register_fake("fastddpm::group_norm")
    def _group_norm_fake(x, num_groups, weight, bias, eps, add, scale, shift, silu):
        return torch.empty_like(x, memory_format=_result_memory_format(x))

    @torch.library.register_fake("fastddpm::attention")
    def _attention_fake(q, k, v, scale):
        return torch.empty_like(q, memory_format=torch.contiguous_format)

    @torch.library.register_fake("fastddpm::winograd_conv3x3")
    def _winograd_conv3x3_fake(x, weight, bias, residual, tile, out_channels):
        n, _, h, w = x.shape
        return x.new_empty((n, out_channels, h, w)).contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake("fastddpm::pack_matmul_weight")
    def _pack_matmul_weight_fake(weight):
        *lead, k, n = weight.shape
        width = _load().matmul_panel_width
        return weight.new_empty((*lead, -(-n // width), k, width), dtype=torch.float32)

    @torch.library.register_fake("fastddpm::matmul_rows")
    def _matmul_rows_fake(x, packed, n, bias, residual, input_silu, divisor):
        return x.new_empty((*x.shape[:-1], n))

    @torch.library.register_fake("fastddpm::box_muller")
    def _box_muller_fake(r0, r1):
        return r0.new_empty(r0.shape, dtype=torch.float32)

    _fakes_registered = True


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    *,
    add: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    silu: bool = False,
) -> torch.Tensor:
    """reference.group_norm through fastddpm::group_norm; see why_not_group_norm for what it serves."""
    _load()
    return torch.ops.fastddpm.group_norm(
        x, int(num_groups), weight, bias, float(eps), add, scale, shift, bool(silu)
    )


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """reference.attention through fastddpm::attention (scale defaults to D ** -0.5, as torch's SDPA)."""
    _load()
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return torch.ops.fastddpm.attention(q, k, v, float(scale))


def _explicitly_chosen() -> bool:
    # FASTDDPM_BACKEND=ext asks for these kernels even where torch was measured faster: speed refusals are
    # advice for "auto", the rest are things the kernels cannot do.
    return os.environ.get("FASTDDPM_BACKEND", "auto").strip().lower() == "ext"


def _common_reasons(op: str, tensors: dict[str, torch.Tensor | None]) -> list[str]:
    """Reasons shared by every op: not built, devices, dtypes, autograd, the CPU's instruction set."""
    extension = _load()
    if extension is None:
        return [_load_error or "fastddpm._C is not built"]
    present = {name: t for name, t in tensors.items() if t is not None}
    for name, t in present.items():
        if not isinstance(t, torch.Tensor):
            return [f"{op}: {name} is a {type(t).__name__}, not a tensor"]
    first_name, first = next(iter(present.items()))
    reasons = []
    if first.dtype not in SUPPORTED_DTYPES:
        reasons.append(
            f"{op}: {first_name} has dtype {first.dtype}; the kernels take float32, float16, bfloat16"
        )
    device = first.device
    if any(t.device != device for t in present.values()):
        reasons.append(f"{op}: the tensors are on different devices")
    if device.type == "cuda":
        if op not in ops_with_cuda_kernels():
            reasons.append(f"{op}: this build of fastddpm._C has no CUDA kernel (built without CUDA)")
        elif not CUDA_KERNELS_RUN_ON_A_GPU and not _explicitly_chosen():
            reasons.append(_CUDA_NOT_YET_RUN)
    elif device.type == "cpu":
        built_for = extension.cpu_capability
        if (
            _CPU_CAPABILITY_RANK.get(torch.backends.cpu.get_cpu_capability(), 0)
            < _CPU_CAPABILITY_RANK[built_for]
        ):
            reasons.append(
                f"{op}: fastddpm._C's CPU kernels were built for {built_for}, which this CPU lacks"
            )
    else:
        reasons.append(f"{op}: no kernel for device {device.type}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in present.values()):
        reasons.append(f"{op}: the kernels have no backward, and an input requires grad")
    return reasons


def why_not_group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    *,
    add: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    silu: bool = False,
) -> list[str]:
    tensors = {"x": x, "weight": weight, "bias": bias, "add": add, "scale": scale, "shift": shift}
    reasons = _common_reasons("group_norm", tensors)
    if any(t is not None and not isinstance(t, torch.Tensor) for t in tensors.values()):
        return reasons
    if x.dim() != 4:
        return reasons + [f"group_norm: x must be 4-d (N, C, H, W), got shape {tuple(x.shape)}"]
    n, c, h, w = x.shape
    if not isinstance(num_groups, int) or num_groups <= 0 or c % num_groups:
        reasons.append(f"group_norm: num_groups={num_groups} does not divide C={c}")
    for name in ("weight", "bias"):
        t = tensors[name]
        if t is not None and tuple(t.shape) != (c,):
            reasons.append(f"group_norm: {name} has shape {tuple(t.shape)}, expected ({c},)")
    for name in ("add", "scale", "shift"):
        t = tensors[name]
        if t is not None and tuple(t.shape) != (n, c):
            reasons.append(f"group_norm: {name} has shape {tuple(t.shape)}, expected ({n}, {c})")
    if scale is None and shift is not None:
        reasons.append("group_norm: shift without scale (reference.group_norm applies shift only with scale)")
    if (
        not reasons
        and x.device.type == "cpu"
        and not _explicitly_chosen()
        and _result_memory_format(x) == torch.contiguous_format
        and num_groups == 32
        and (n, c, h, w) in _CPU_GROUP_NORM_SLOWER
    ):
        reasons.append(f"group_norm: torch was measured faster on CPU at {(n, c, h, w)} (see backend_ext.py)")
    return reasons


def why_not_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> list[str]:
    reasons = _common_reasons("attention", {"q": q, "k": k, "v": v})
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return reasons or ["attention: q, k and v must all be tensors"]
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return reasons + ["attention: q, k and v must be 4-d (B, heads, L, D)"]
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        reasons.append(
            f"attention: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match "
            "(k and v alike; B, heads and D shared with q)"
        )
    if q.dtype != k.dtype or q.dtype != v.dtype:
        reasons.append("attention: q, k and v have different dtypes")
    if not 1 <= q.shape[3] <= MAX_HEAD_DIM:
        reasons.append(f"attention: head dimension {q.shape[3]} is outside 1..{MAX_HEAD_DIM}")
    if k.shape[2] == 0 and q.shape[2] > 0:
        reasons.append("attention: no keys (L = 0)")
    if not reasons and q.device.type == "cpu" and not _explicitly_chosen():
        reasons.append(_CPU_ATTENTION_REFUSAL)
    if not reasons and q.device.type == "cuda" and not _explicitly_chosen():
        refusal = cuda_attention_speed_gate(q, k, v, scale)
        if refusal:
            reasons.append(refusal)
    return reasons


def _time_cuda(fn, warmup: int, timed: int) -> float:
    """Median seconds of one call of fn, by CUDA events on the current stream."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(timed):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


def _measure_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None
) -> tuple[float, float]:
    """(this kernel's, SDPA's) median seconds at these inputs."""
    import torch.nn.functional as F

    with torch.no_grad():
        ext = _time_cuda(lambda: attention(q, k, v, scale), _GATE_WARMUP_CALLS, _GATE_TIMED_CALLS)
        sdpa = _time_cuda(
            lambda: F.scaled_dot_product_attention(q, k, v, scale=scale),
            _GATE_WARMUP_CALLS,
            _GATE_TIMED_CALLS,
        )
    return ext, sdpa


def cuda_attention_speed_gate(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None
) -> str | None:
    """None where the CUDA attention kernel was measured faster than SDPA at these inputs, else why not."""
    key = (str(q.device), tuple(q.shape), tuple(k.shape), q.dtype)
    if key in _cuda_attention_verdicts:
        return _cuda_attention_verdicts[key]
    if torch.compiler.is_compiling() or (q.is_cuda and torch.cuda.is_current_stream_capturing()):
        # Not cached: an eager call measures it.
        return "attention: not yet measured against SDPA at this shape (no timing during capture or compile)"
    try:
        ext, sdpa = _measure_attention(q, k, v, scale)
    except Exception as exc:  # a kernel that fails here must not serve the U-Net; the tests report it
        verdict = f"attention: the CUDA kernel failed when timed against SDPA: {type(exc).__name__}: {exc}"
    else:
        verdict = None
        if sdpa < ext * _GATE_MARGIN:
            verdict = (
                f"attention: SDPA measured faster on {q.device} at q {tuple(q.shape)} {q.dtype} "
                f"({sdpa * 1e6:.0f} us vs {ext * 1e6:.0f} us for this kernel)"
            )
    _cuda_attention_verdicts[key] = verdict
    return verdict


def why_not_winograd_conv3x3(x: torch.Tensor) -> list[str]:
    """Why the CPU Winograd convolution cannot take input x (the rest is fastddpm.models.conv's to check)."""
    reasons = _common_reasons("winograd_conv3x3", {"x": x})
    if x.device.type != "cpu":
        reasons.append(f"winograd_conv3x3: CPU only, x is on {x.device.type}")

    if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
        reasons.append("winograd_conv3x3: x must be a 4-d channels_last tensor")
    return reasons


def cpu_kernels_usable() -> bool:
    """Whether fastddpm._C is loaded and this CPU has the instruction set its CPU kernels were built for."""
    extension = _load()
    return extension is not None and (
        _CPU_CAPABILITY_RANK.get(torch.backends.cpu.get_cpu_capability(), 0)
        >= _CPU_CAPABILITY_RANK[extension.cpu_capability]
    )


def box_muller(r0: torch.Tensor, r1: torch.Tensor) -> torch.Tensor:
    """fastddpm.ops.noise.normal_from_bits on the CPU, every element through one code path (CPU)."""
    return torch.ops.fastddpm.box_muller(r0, r1)


def winograd_conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    tile: int,
    out_channels: int,
) -> torch.Tensor:
    """3x3 convolution (stride 1, padding 1) by Winograd F(tile x tile, 3 x 3); weight is the packed,
    transformed weight of fastddpm.models.conv.winograd_weight; + bias, + residual when given."""
    return torch.ops.fastddpm.winograd_conv3x3(x, weight, bias, residual, int(tile), int(out_channels))


def pack_matmul_weight(weight: torch.Tensor) -> torch.Tensor:
    """A (K, N) or (P, K, N) matrix packed for matmul_rows (float32 panels of _C.matmul_panel_width columns)."""
    return torch.ops.fastddpm.pack_matmul_weight(weight)


def matmul_rows(
    x: torch.Tensor,
    packed: torch.Tensor,
    out_features: int,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    input_silu: bool = False,
    divisor: float = 1.0,
) -> torch.Tensor:
    """(act(x) @ W + bias + residual) / divisor over x's last dimension, W packed by pack_matmul_weight,
    act = SiLU when input_silu; every element summed in one order whatever x's leading shape (CPU)."""
    return torch.ops.fastddpm.matmul_rows(x, packed, int(out_features), bias, residual, input_silu, divisor)


# Whoever imported fastddpm._C directly and met torch's "import 'fastddpm.ops.backend_ext' to load the fake
# impl" (set_python_module in the host file) gets the fakes registered by that import, as _load() would.
if "fastddpm._C" in sys.modules:
    _load()
