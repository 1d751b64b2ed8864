"""bf16 / fp16 networks on CPUs without bf16 / fp16 instructions: 16-bit tensors between layers, float32
arithmetic inside them.

Where the CPU lacks the instructions (bf16: AVX512-BF16 or AMX; fp16: AMX-FP16), oneDNN and MKL emulate
16-bit convolutions and matmuls, slower than their float32 kernels: on this project's CI machine (Ice Lake,
2 threads) the cifar10-32 U-Net in bf16 ran at 0.45-0.6x the speed of diffusers in float32. There, the
U-Net's convolutions (fastddpm.models.conv) and attention blocks load their 16-bit inputs as float32, compute in
float32 with float32 copies of their parameters (made once), and round their outputs back to 16 bits: the
same tensors in and out, and at least the accuracy of a native 16-bit kernel (which also accumulates in
float32). Where the instructions exist, the native 16-bit kernels run (not measured: no such CPU here).
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def emulates(dtype: torch.dtype) -> bool:
    """Whether this CPU lacks the instructions for dtype's convolutions and matmuls."""
    cpu = torch.cpu
    if dtype == torch.bfloat16:
        native = (
            getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
            or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
        )
        return not native
    if dtype == torch.float16:
        return not getattr(cpu, "_is_amx_fp16_supported", lambda: False)()
    return False


def computes_in_float32(x: torch.Tensor) -> bool:
    """Whether a layer should run on x in float32 (and round its output back to x's dtype)."""
    # Compiling first: torch.compile traces the native path and never reaches the cached CPU probe.
    return (
        not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and emulates(x.dtype)
    )
