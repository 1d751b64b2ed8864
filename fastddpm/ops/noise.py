"""Counter-based Gaussian noise keyed by (seed, sample index, stream).

The definition (the Triton kernels draw the same numbers in-kernel):

- Philox4x32-10 (Salmon et al. 2011, the constants of Random123, cuRAND and triton.language.philox),
  key = (seed & 0xFFFFFFFF, seed >> 32), counter = (element, sample index, stream, 0), where element is
  the flat index inside one sample (C*H*W of them) and stream is 0 for x_T and i + 1 for the noise of
  reverse step i;
- of the four 32-bit outputs r0..r3, u1 = ((r0 >> 8) + 0.5) / 2^24 in (0, 1) and u2 = (r1 >> 8) / 2^24,
  both exact in float32; z = sqrt(-2 ln u1) * cos(2 pi u2), computed in float32.

Sample b of a batch that starts at ``sample_offset`` has sample index ``sample_offset + b``, so each image
depends only on (seed, its index, step): any batch size or process split gives the same noise. The
integer Philox words are the same on every device; the float32 normals are where ``log`` and ``cos`` are:
torch's CPU functions and the Triton kernels' libdevice ones (CUDA) may differ in the last bits.
Pure torch with int64 arithmetic, so it runs on any device and needs no host sync when ``stream`` is a
device tensor.

``randn_tensor`` is the other noise mode, "torch": draws from a torch.Generator exactly as diffusers'
randn_tensor draws them, so a shared generator stays in step with diffusers' pipelines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUNDS = 10
_MASK32 = 0xFFFFFFFF
TWO_PI = 2.0 * math.pi


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product a * b, for a < 2^32 and int64 b in [0, 2^32).

    The product can reach 2^64, past int64, so b is split in 16-bit halves whose partial products fit.
    """
    p_low = a * (b & 0xFFFF)
    p_high = a * (b >> 16)
    middle = p_low + ((p_high & 0xFFFF) << 16)
    return (p_high >> 16) + (middle >> 32), middle & _MASK32


def philox4x32(
    c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 on int64 tensors holding uint32 values (broadcast together); returns r0..r3."""
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32
    for _ in range(PHILOX_ROUNDS):
        hi_b, lo_b = _mulhilo(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _MASK32
        k1 = (k1 + PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def normal_from_bits(r0: torch.Tensor, r1: torch.Tensor) -> torch.Tensor:
    """Box-Muller (cosine branch) of two uint32 words held in int64 tensors, in float32.

    On the CPU, fastddpm._C's box_muller when it is built: torch's log and cos compute a thread's last few
    elements with scalar code that can differ from the vector code in the last bit, and which elements those
    are depends on the tensor's size, so a sample's noise would depend on its batch. The extension's kernel
    takes every element through the vector code."""
    if r0.device.type == "cpu" and not torch.compiler.is_compiling():
        from fastddpm.ops import backend_ext  # not at import: backend_ext loads the extension

        if backend_ext.cpu_kernels_usable():
            return backend_ext.box_muller(r0, r1)
    u1 = ((r0 >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)
    u2 = (r1 >> 8).to(torch.float32) * (1.0 / 16777216.0)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(TWO_PI * u2)


def philox_normal(
    seed: int,
    sample_offset: int | torch.Tensor,
    batch: int,
    sample_shape: tuple[int, ...] | torch.Size,
    stream: int | torch.Tensor,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """N(0, I) float32 noise of shape (batch, *sample_shape) for samples sample_offset .. + batch - 1.

    ``sample_offset`` and ``stream`` may be 0-d int64 device tensors, so a captured CUDA graph can be
    replayed for another batch or step by updating them in place.
    """
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    if isinstance(stream, torch.Tensor):
        device = stream.device if device is None else device
        stream_counter = stream.to(device=device, dtype=torch.int64).reshape(1, 1) & _MASK32
    else:
        stream_counter = torch.tensor([[stream & _MASK32]], dtype=torch.int64, device=device)
    per_sample = math.prod(sample_shape)
    element = torch.arange(per_sample, dtype=torch.int64, device=device).reshape(1, -1)
    if isinstance(sample_offset, torch.Tensor):
        sample_offset = sample_offset.to(device=device, dtype=torch.int64)
    sample = (torch.arange(batch, dtype=torch.int64, device=device) + sample_offset).reshape(-1, 1) & _MASK32
    zero = torch.zeros((), dtype=torch.int64, device=device)
    r0, r1, _, _ = philox4x32(element, sample, stream_counter, zero, seed)
    return normal_from_bits(r0, r1).reshape(batch, *sample_shape)


def randn_tensor(
    shape: Sequence[int],
    generator: torch.Generator | list[torch.Generator] | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """N(0, I) drawn the way diffusers' randn_tensor draws it, so a shared generator stays in step.

    A CPU generator draws on the CPU and the result moves to ``device``; a list draws one sample each.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    rand_device = device
    if generator is not None:
        gen_device = (generator[0] if isinstance(generator, list) else generator).device
        if gen_device.type != device.type and gen_device.type == "cpu":
            rand_device = torch.device("cpu")
        elif gen_device.type != device.type:
            raise ValueError(f"generator on {gen_device.type} cannot draw a tensor for {device.type}")
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        one = (1, *shape[1:])
        parts = [torch.randn(one, generator=g, device=rand_device, dtype=dtype) for g in generator]
        return torch.cat(parts).to(device)
    return torch.randn(tuple(shape), generator=generator, device=rand_device, dtype=dtype).to(device)


CLASS_LABEL_STREAM = 0xFFFFFFFF  # a stream no reverse step reaches (step streams are 1..steps)


def philox_class_labels(
    seed: int, sample_offset: int, batch: int, num_classes: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Uniform class labels in [0, num_classes), int64 (batch,): sample b's label depends only on (seed,
    sample_offset + b). From Philox word r0 at counter (0, sample index, CLASS_LABEL_STREAM, 0), as
    (r0 * num_classes) >> 32 (Lemire's multiply-shift: no modulo, bias below num_classes / 2^32)."""
    sample = (torch.arange(batch, dtype=torch.int64, device=device) + sample_offset) & _MASK32
    zero = torch.zeros((), dtype=torch.int64, device=device)
    stream = torch.full((), CLASS_LABEL_STREAM, dtype=torch.int64, device=device)
    r0, _, _, _ = philox4x32(zero, sample, stream, zero, seed)
    return (r0 * num_classes) >> 32
