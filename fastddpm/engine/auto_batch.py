"""batch_size="auto": the largest batch whose sampling step fits in the CUDA device's free memory.

The U-Net's peak memory grows linearly with the batch, so two measured forwards (batch 1 and 2) give the
fixed part (weights, workspace) and the per-sample part; the batch is what fits in a fraction of the free
memory, leaving headroom for the CUDA graph's pool and the sampler's buffers.
"""

from __future__ import annotations

import torch

HEADROOM = 0.85  # of the free memory; the rest covers allocator fragmentation and the graph's pool
MAX_AUTO_BATCH = 4096


def batch_that_fits(free_bytes: int, peak_batch1: int, peak_batch2: int, state_bytes_per_sample: int) -> int:
    """Largest batch with fixed + batch * per_sample <= HEADROOM * free, from peaks at batch 1 and 2."""
    per_sample = max(peak_batch2 - peak_batch1, 1) + state_bytes_per_sample
    fixed = max(peak_batch1 - per_sample, 0)
    fits = int((HEADROOM * free_bytes - fixed) // per_sample)
    if fits < 1:
        raise RuntimeError(
            f"batch_size='auto': not even one sample fits in {free_bytes / 2**30:.2f} GiB of free GPU memory"
        )
    return min(fits, MAX_AUTO_BATCH)


def auto_batch_size(unet: torch.nn.Module, sample_shape: tuple[int, ...], dtype: torch.dtype) -> int:
    device = next(unet.parameters()).device
    if device.type != "cuda":
        raise ValueError(f"batch_size='auto' needs the pipeline on a CUDA device, it is on {device}")
    peaks = []
    for batch in (1, 2):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            x = torch.zeros((batch, *sample_shape), dtype=dtype, device=device)
            unet(x, torch.zeros(batch, dtype=torch.int64, device=device))
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device))
    free, _ = torch.cuda.mem_get_info(device)
    # x_t, its copy, the noise, model output (float32) and x0_hat: five float32 samples of state per image
    state = 5 * 4 * int(torch.Size(sample_shape).numel())
    return batch_that_fits(free + torch.cuda.memory_allocated(device), peaks[0], peaks[1], state)
