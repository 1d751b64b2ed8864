"""In-kernel "philox" noise: the numbers of fastddpm/ops/noise.py, drawn where they are used.

noise.py defines the noise as Philox4x32-10 keyed by (seed & 0xFFFFFFFF, seed >> 32) on the counter
(element, sample index, stream, 0), then Box-Muller (cosine branch) of the first two output words.
``triton.language.philox`` is the same generator: the round constants 0xD2511F53 / 0xCD9E8D57, the key
increments 0x9E3779B9 / 0xBB67AE85, ten rounds, the same word permutation per round, and the same key
split (low word first) when it is handed 32-bit counters. tests/kernels/test_philox.py checks the raw
words bit for bit against noise.philox4x32 and the normals against noise.philox_normal.

The jit helpers (`philox_normal`) are inlined into the q_sample and sampler_step kernels; the launchers
here (`philox_words`, `normal`) exist for the tests and for drawing x_T on the device.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import triton
import triton.language as tl

MASK32 = 0xFFFFFFFF


@triton.jit
def box_muller(r0, r1):
    """N(0, 1) float32 from two uint32 words: u1 in (0, 1), u2 in [0, 1), both exact in float32."""
    u1 = ((r0 >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
    u2 = (r1 >> 8).to(tl.float32) * (1.0 / 16777216.0)
    # 6.283185307179586 becomes float32(2 pi), as noise.TWO_PI does in torch's float32 multiply.
    return tl.sqrt_rn(-2.0 * tl.log(u1)) * tl.cos(6.283185307179586 * u2)


@triton.jit
def philox_normal(seed, element, sample, stream):
    """noise.py's normal for counters (element, sample, stream, 0); element/sample/stream are uint32.

    Callers pass 32-bit counters: tl.philox switches to the 64-bit Philox variant for 64-bit counters.
    """
    zero = element * 0
    r0, r1, _, _ = tl.philox(seed, element, sample + zero, stream + zero, zero)
    return box_muller(r0, r1)


@triton.jit
def load_counter(value, IN_MEMORY: tl.constexpr):
    """A counter given as an int argument, or as a pointer to an int64 in device memory (so a captured
    CUDA graph replays with the new value), as int64."""
    if IN_MEMORY:
        return tl.load(value).to(tl.int64)
    else:
        return value.to(tl.int64)


@triton.jit
def sample_normal(
    seed,
    sample_offset,
    stream,
    sample_row,
    element,
    OFFSET_IN_MEMORY: tl.constexpr,
    STREAM_IN_MEMORY: tl.constexpr,
):
    """noise.philox_normal's value for batch row ``sample_row``, elements ``element`` (NCHW flat index)."""
    sample_index = (sample_row.to(tl.int64) + load_counter(sample_offset, OFFSET_IN_MEMORY)).to(tl.uint32)
    stream_counter = load_counter(stream, STREAM_IN_MEMORY).to(tl.uint32)
    return philox_normal(seed, element.to(tl.uint32), sample_index, stream_counter)


@triton.jit(do_not_specialize=["seed", "sample_offset", "noise_stream"])
def _philox_kernel(
    words_ptr,  # uint32-as-int64 output (4, batch, per_sample) of the raw words, when WRITE_WORDS
    normal_ptr,  # float32 output (batch, per_sample)
    seed,  # 64-bit key, split by tl.philox into (low, high) words
    sample_offset,  # sample index of batch row 0: an int, or a pointer to a 0-d int64 when OFFSET_IN_MEMORY
    noise_stream,  # stream counter: an int, or a pointer to a 0-d int64 when STREAM_IN_MEMORY
    batch,  # number of samples
    per_sample,  # elements per sample
    OFFSET_IN_MEMORY: tl.constexpr,  # read the sample offset from device memory
    STREAM_IN_MEMORY: tl.constexpr,  # read the stream from device memory (graph-replayable steps)
    WRITE_WORDS: tl.constexpr,  # also write the four raw Philox words (tests compare them bit for bit)
    BLOCK: tl.constexpr,  # elements per program
):
    # Moves 4 bytes written per element (plus 32 with WRITE_WORDS); pure compute otherwise.
    sample_row = tl.program_id(1)
    element = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = element < per_sample
    offset = sample_row.to(tl.int64) * per_sample + element
    if WRITE_WORDS:
        sample_index = (sample_row.to(tl.int64) + load_counter(sample_offset, OFFSET_IN_MEMORY)).to(tl.uint32)
        stream_counter = load_counter(noise_stream, STREAM_IN_MEMORY).to(tl.uint32)
        counter = element.to(tl.uint32)
        zero = counter * 0
        r0, r1, r2, r3 = tl.philox(seed, counter, sample_index + zero, stream_counter + zero, zero)
        # tl.cast, not batch.to(): compiled Triton passes an int argument equal to 1 as a constexpr, which
        # has no .to(); tl.cast makes a tensor of either.
        plane = tl.cast(batch, tl.int64) * per_sample
        tl.store(words_ptr + offset, r0.to(tl.int64), mask=mask)
        tl.store(words_ptr + plane + offset, r1.to(tl.int64), mask=mask)
        tl.store(words_ptr + 2 * plane + offset, r2.to(tl.int64), mask=mask)
        tl.store(words_ptr + 3 * plane + offset, r3.to(tl.int64), mask=mask)
    z = sample_normal(
        seed, sample_offset, noise_stream, sample_row, element, OFFSET_IN_MEMORY, STREAM_IN_MEMORY
    )
    tl.store(normal_ptr + offset, z, mask=mask)


def counter_argument(
    value: int | torch.Tensor, device: torch.device, name: str
) -> tuple[int | torch.Tensor, bool]:
    """(kernel argument, IN_MEMORY) for a counter (stream, sample offset): an int or a 0-d int64 tensor."""
    if isinstance(value, torch.Tensor):
        same_device = value.device.type == device.type and device.index in (None, value.device.index)
        if value.numel() != 1 or value.dtype != torch.int64 or not same_device:
            raise ValueError(
                f"kernels/philox.py: {name} must be a one-element int64 tensor on {device}, got "
                f"{tuple(value.shape)} {value.dtype} on {value.device}"
            )
        return value, True
    return int(value) & MASK32, False


def philox_arguments(noise, device: torch.device) -> dict:
    """The kernel arguments of an ops.PhiloxNoise: seed, sample_offset, stream and where they live.

    The stream counter is passed as ``noise_stream``: compiled Triton's launch refuses a keyword argument
    named ``stream`` (Triton 3.6 and 3.8: "stream option is deprecated"), which the interpreter accepts.
    """
    if not 0 <= noise.seed < 2**64:
        raise ValueError(f"kernels/philox.py: the philox seed must be in [0, 2**64), got {noise.seed}")
    sample_offset, offset_in_memory = counter_argument(noise.sample_offset, device, "sample_offset")
    stream, stream_in_memory = counter_argument(noise.stream, device, "stream")
    return dict(
        seed=noise.seed,
        sample_offset=sample_offset,
        noise_stream=stream,
        OFFSET_IN_MEMORY=offset_in_memory,
        STREAM_IN_MEMORY=stream_in_memory,
    )


# Arguments of a kernel launched without philox noise (the constexpr flags compile the noise code out).
NO_PHILOX = dict(seed=0, sample_offset=0, noise_stream=0, OFFSET_IN_MEMORY=False, STREAM_IN_MEMORY=False)

# The sampler-step kernels' NOISE constexpr: no noise, a noise tensor, or Philox noise drawn in the kernel.
NOISE_NONE, NOISE_TENSOR, NOISE_PHILOX = 0, 1, 2


def step_noise_arguments(noise, sample: torch.Tensor, memory_format, caller: str):
    """(NOISE mode, noise tensor argument, philox arguments) for a sampler-step launch: ``noise`` is None,
    a float32 tensor of the sample's shape (made dense in ``memory_format``) or an ops.PhiloxNoise."""
    if noise is None:
        return NOISE_NONE, sample, NO_PHILOX
    if isinstance(noise, torch.Tensor):
        if noise.shape != sample.shape or noise.dtype != torch.float32:
            raise ValueError(f"{caller}: noise must be float32 of the sample's shape")
        return NOISE_TENSOR, noise.contiguous(memory_format=memory_format), NO_PHILOX
    return NOISE_PHILOX, sample, philox_arguments(noise, sample.device)


def _launch(seed, sample_offset, batch, sample_shape, stream, device, write_words: bool, block: int):
    device = torch.device(device)
    per_sample = math.prod(sample_shape)
    if per_sample >= 2**31:
        raise ValueError(f"kernels/philox.py: {per_sample} elements per sample overflow the element counter")
    if batch > 65535:
        raise ValueError(f"kernels/philox.py: batch {batch} exceeds the 65535 programs of grid axis 1")
    noise = SimpleNamespace(seed=seed, sample_offset=sample_offset, stream=stream)
    normal = torch.empty((batch, per_sample), dtype=torch.float32, device=device)
    words = torch.empty((4, batch, per_sample) if write_words else (1,), dtype=torch.int64, device=device)
    grid = (triton.cdiv(per_sample, block), batch)
    _philox_kernel[grid](
        words,
        normal,
        batch=batch,
        per_sample=per_sample,
        WRITE_WORDS=write_words,
        BLOCK=block,
        **philox_arguments(noise, device),
    )
    return words, normal.reshape(batch, *sample_shape)


def normal(
    seed: int,
    sample_offset: int | torch.Tensor,
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
    sample_offset: int | torch.Tensor,
    batch: int,
    per_sample: int,
    stream: int | torch.Tensor,
    device: torch.device | str,
    block: int = 1024,
) -> tuple[torch.Tensor, ...]:
    """The four raw Philox output words (int64 holding uint32), each (batch, per_sample), for the tests."""
    words = _launch(seed, sample_offset, batch, (per_sample,), stream, device, True, block)[0]
    return tuple(words.unbind(0))
