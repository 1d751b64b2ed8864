"""In-kernel "philox" noise: the numbers of fastddpm/noise.py, drawn where they are used.

noise.py defines the noise as Philox4x32-10 keyed by (seed & 0xFFFFFFFF, seed >> 32) on the counter
(element, sample index, stream, 0), then Box-Muller (cosine branch) of the first two output words.
``triton.language.philox`` is the same generator: the round constants 0xD2511F53 / 0xCD9E8D57, the key
increments 0x9E3779B9 / 0xBB67AE85, ten rounds, the same word permutation per round, and the same key
split (low word first) when it is handed 32-bit counters. tests/test_kernels_philox.py checks the raw
words bit for bit against noise.philox4x32 and the normals against noise.philox_normal.

The jit helpers (`philox_normal`) are inlined into the q_sample and sampler_step kernels; the launchers
here (`philox_words`, `normal`) exist for the tests and for drawing x_T on the device.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

MASK32 = 0xFFFFFFFF
TWO_PI = 2.0 * math.pi


@triton.jit
def box_muller(r0, r1):
    """N(0, 1) float32 from two uint32 words: u1 in (0, 1), u2 in [0, 1), both exact in float32."""
    u1 = ((r0 >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
    u2 = (r1 >> 8).to(tl.float32) * (1.0 / 16777216.0)
    return tl.sqrt(-2.0 * tl.log(u1)) * tl.cos(6.283185307179586 * u2)


@triton.jit
def philox_normal(seed, element, sample, stream):
    """noise.py's normal for counters (element, sample, stream, 0); element/sample/stream are uint32.

    Callers pass 32-bit counters: tl.philox switches to the 64-bit Philox variant for 64-bit counters.
    """
    zero = element * 0
    r0, r1, _, _ = tl.philox(seed, element, sample + zero, stream + zero, zero)
    return box_muller(r0, r1)


@triton.jit(do_not_specialize=["seed", "sample_offset", "stream"])
def _philox_kernel(
    words_ptr,  # uint32-as-int64 output (4, batch, per_sample) of the raw words, when WRITE_WORDS
    normal_ptr,  # float32 output (batch, per_sample)
    seed,  # 64-bit key, split by tl.philox into (low, high) words
    sample_offset,  # sample index of batch row 0, already reduced mod 2^32
    stream,  # stream counter: an int, or a pointer to a 0-d int64 when STREAM_IN_MEMORY
    batch,  # number of samples
    per_sample,  # elements per sample
    STREAM_IN_MEMORY: tl.constexpr,  # read the stream from device memory (graph-replayable steps)
    WRITE_WORDS: tl.constexpr,  # also write the four raw Philox words (tests compare them bit for bit)
    BLOCK: tl.constexpr,  # elements per program
):
    # Moves 4 bytes written per element (plus 32 with WRITE_WORDS); pure compute otherwise.
    sample_row = tl.program_id(1)
    element = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = element < per_sample
    if STREAM_IN_MEMORY:
        stream_counter = tl.load(stream).to(tl.uint32)
    else:
        stream_counter = stream.to(tl.int64).to(tl.uint32)
    sample_index = (sample_row + sample_offset.to(tl.int64)).to(tl.uint32)
    counter = element.to(tl.uint32)
    offset = sample_row.to(tl.int64) * per_sample + element
    if WRITE_WORDS:
        zero = counter * 0
        r0, r1, r2, r3 = tl.philox(seed, counter, sample_index + zero, stream_counter + zero, zero)
        plane = batch.to(tl.int64) * per_sample
        tl.store(words_ptr + offset, r0.to(tl.int64), mask=mask)
        tl.store(words_ptr + plane + offset, r1.to(tl.int64), mask=mask)
        tl.store(words_ptr + 2 * plane + offset, r2.to(tl.int64), mask=mask)
        tl.store(words_ptr + 3 * plane + offset, r3.to(tl.int64), mask=mask)
    z = philox_normal(seed, counter, sample_index, stream_counter)
    tl.store(normal_ptr + offset, z, mask=mask)


def stream_argument(stream: int | torch.Tensor, device: torch.device) -> tuple[int | torch.Tensor, bool]:
    """(kernel argument, STREAM_IN_MEMORY) for a stream given as an int or a 0-d integer device tensor."""
    if isinstance(stream, torch.Tensor):
        if stream.numel() != 1 or stream.dtype != torch.int64 or stream.device != device:
            raise ValueError(
                f"kernels/philox.py: stream must be a one-element int64 tensor on {device}, got "
                f"{tuple(stream.shape)} {stream.dtype} on {stream.device}"
            )
        return stream, True
    return int(stream) & MASK32, False


def _launch(seed, sample_offset, batch, sample_shape, stream, device, write_words: bool, block: int):
    if not 0 <= seed < 2**64:
        raise ValueError(f"kernels/philox.py: seed must be in [0, 2**64), got {seed}")
    device = torch.device(device)
    per_sample = math.prod(sample_shape)
    if per_sample >= 2**31:
        raise ValueError(f"kernels/philox.py: {per_sample} elements per sample overflow the element counter")
    stream_arg, in_memory = stream_argument(stream, device)
    normal = torch.empty((batch, per_sample), dtype=torch.float32, device=device)
    words = torch.empty((4, batch, per_sample) if write_words else (1,), dtype=torch.int64, device=device)
    grid = (triton.cdiv(per_sample, block), batch)
    _philox_kernel[grid](
        words,
        normal,
        seed,
        sample_offset & MASK32,
        stream_arg,
        batch,
        per_sample,
        STREAM_IN_MEMORY=in_memory,
        WRITE_WORDS=write_words,
        BLOCK=block,
    )
    return words, normal.reshape(batch, *sample_shape)


def normal(
    seed: int,
    sample_offset: int,
    batch: int,
    sample_shape: tuple[int, ...] | torch.Size,
    stream: int | torch.Tensor,
    device: torch.device | str,
    block: int = 1024,
) -> torch.Tensor:
    """The same tensor as noise.philox_normal(seed, sample_offset, batch, sample_shape, stream, device)."""
    return _launch(seed, sample_offset, batch, sample_shape, stream, device, False, block)[1]


def philox_words(
    seed: int,
    sample_offset: int,
    batch: int,
    per_sample: int,
    stream: int | torch.Tensor,
    device: torch.device | str,
    block: int = 1024,
) -> tuple[torch.Tensor, ...]:
    """The four raw Philox output words (int64 holding uint32), each (batch, per_sample), for the tests."""
    words = _launch(seed, sample_offset, batch, (per_sample,), stream, device, True, block)[0]
    return tuple(words.unbind(0))
