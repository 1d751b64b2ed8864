"""The noise argument a sampler-step kernel test passes: a tensor, a PhiloxNoise, or None."""

import torch

from fastddpm import ops


def step_noise(mode: str, shape, device, seed: int = 11):
    """ "tensor": N(0, I) of ``shape``; "philox": a PhiloxNoise with its counters in device memory, as a
    captured sampling step holds them (sample offset past 2**32); anything else: None."""
    if mode == "tensor":
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    if mode == "philox":
        counter = dict(dtype=torch.int64, device=device)
        return ops.PhiloxNoise(seed, torch.tensor(2**32 + 3, **counter), torch.tensor(5, **counter))
    return None
