"""The Brownian noise of DPMSolverSDEScheduler (k-diffusion's DPM-Solver++ SDE), in its two forms.

Each step of that sampler makes two network calls, and both add noise taken from ONE Brownian path W over
sigma: the first call the increment from sigma to the step's midpoint, the second from sigma to sigma_next,
each divided by the square root of its length (so each is N(0, I), and the two are correlated).

noise="torch" -- diffusers' numbers: a torchsde BrownianInterval over [smallest positive sigma, largest
sigma], one for the whole batch, seeded with config.noise_sampler_seed or, where that is None, with an int
drawn from torch's global RNG when the first step runs (diffusers' BrownianTreeNoiseSampler; a list of seeds,
one per sample, gives one tree per sample as there). torchsde is an optional extra (pip install fastddpm[sde]),
imported here only, and only when such a tree is built.

noise="philox" -- the same law without a tree: a step's two increments are the Brownian path at the three
points it queries, built from two independent normals of the sample's Philox streams (its first and second
call's): n1 = z1 and n2 = (sqrt(a) z1 + sqrt(b) z2) / sqrt(a + b), with a = sigma - sigma_mid and
b = sigma_mid - sigma_next. Steps query disjoint intervals, so their increments are independent, as a tree's
are. Image i then depends on (seed, i) only, and the construction is linear, so it lives in the step table
(``bridge_weights``), drawn on the device inside the fused update: no host work per step, CUDA-graph safe.
"""

from __future__ import annotations

import math
import warnings

import torch


class MissingTorchsde(ImportError, ValueError):
    """torchsde is not installed. An ImportError, and a ValueError so that the CLI's one-line refusal of a
    setting (exit 2) covers it as it covers every other refused setting."""


def import_torchsde():
    try:
        import torchsde
    except ImportError:
        raise MissingTorchsde(
            "sampler dpm-sde with noise='torch' draws diffusers' Brownian-tree noise, which needs torchsde: "
            "pip install fastddpm[sde] (noise='philox' does not need it)"
        ) from None
    return torchsde


def _ordered(a, b) -> tuple:
    """(low, high, +1.0) if a < b else (high, low, -1.0): torchsde's intervals run forward only."""
    return (a, b, 1.0) if a < b else (b, a, -1.0)


class BrownianTreeNoise:
    """diffusers' BrownianTreeNoiseSampler (over a BatchedBrownianTree): ``noise(sigma, sigma_next)`` is
    (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|), W one Brownian path shaped like ``like`` (one per
    sample where ``seed`` is a list of one seed per sample), with diffusers' tree settings and arithmetic, so
    that the same seed gives the same numbers."""

    TOL = 1e-6  # torchsde rounds query times to 6 digits (diffusers' setting)
    POOL_SIZE = 24  # entropy pool of numpy's SeedSequence (diffusers' setting)

    def __init__(self, like: torch.Tensor, sigma_min: float, sigma_max: float, seed: int | list[int] | None):
        torchsde = import_torchsde()
        low, high, self.sign = _ordered(torch.as_tensor(sigma_min), torch.as_tensor(sigma_max))
        if seed is None:  # diffusers' draw: an int64 from torch's global RNG, when the first step runs
            seed = torch.randint(0, 2**63 - 1, []).item()
        self.per_sample = isinstance(seed, (list, tuple))
        if self.per_sample and len(seed) != like.shape[0]:
            raise ValueError(
                f"noise_sampler_seed has {len(seed)} seeds for a batch of {like.shape[0]}: give one per sample"
            )
        seeds = list(seed) if self.per_sample else [seed]
        size = like.shape[1:] if self.per_sample else like.shape
        self.trees = [
            torchsde.BrownianInterval(
                t0=low,
                t1=high,
                size=size,
                dtype=like.dtype,
                device=like.device,
                entropy=s,
                tol=self.TOL,
                pool_size=self.POOL_SIZE,
                halfway_tree=True,
            )  # fmt: skip
            for s in seeds
        ]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        sigma, sigma_next = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        low, high, sign = _ordered(sigma, sigma_next)
        with warnings.catch_warnings():
            # exp(-(-log sigma)) in float32 can land an ulp outside the tree's interval; torchsde warns
            # ("Should have ta>=t0") and answers as it does for diffusers, whose loop prints the same warning
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            increment = torch.stack([tree(low, high) for tree in self.trees]) * (self.sign * sign)
        if not self.per_sample:
            increment = increment[0]
        return increment / (sigma_next - sigma).abs().sqrt()


class TreeDraws:
    """The host draws of one noise="torch" run of a table plan (SamplingLoop.run's ``draw_noise``): each call's
    tree noise in loop order, zeros for a call that adds none. The tree is built at the first draw, i.e. after
    x_T and before the first step, where diffusers' step builds it (the global RNG's order is kept).

    Drawn per call into the loop's one noise buffer rather than precomputed: precomputing would hold 2 x steps
    batch-sized tensors for the same host work. That work is diffusers' own and large: a query bisects the
    tree down to torchsde's 1e-6 tolerance, about 150 batch-sized tensor operations (measured on the loaded
    2-core CPU at batch 64 x 3 x 32 x 32: 4.0 s a query here, 4.6 s in diffusers' sampler, against 3.6 ms for
    a plain randn). noise="philox" builds no tree and does none of it."""

    def __init__(self, queries, sigma_min: float, sigma_max: float, seed, shape, device) -> None:
        self.queries, self.shape, self.device = queries, tuple(shape), device
        self.sigma_min, self.sigma_max, self.seed = sigma_min, sigma_max, seed
        self.tree: BrownianTreeNoise | None = None
        self.index = 0

    def __call__(self) -> torch.Tensor:
        if self.tree is None:
            like = torch.zeros(self.shape, dtype=torch.float32, device=self.device)
            self.tree = BrownianTreeNoise(like, self.sigma_min, self.sigma_max, self.seed)
        query = self.queries[self.index]
        self.index += 1
        if query is None:
            return torch.zeros(self.shape, dtype=torch.float32, device=self.device)
        return self.tree(*query)


def bridge_weights(sigma: float, sigma_mid: float, sigma_next: float) -> tuple[float, float]:
    """(w1, w2) with w1 z1 + w2 z2 the second call's normalised increment (W(sigma_next) - W(sigma)) /
    sqrt(sigma - sigma_next), where z1 is the first call's (W(sigma_mid) - W(sigma)) / sqrt(sigma - sigma_mid)
    and z2 an independent N(0, I): the Brownian path at the points a step queries."""
    a, b = abs(sigma - sigma_mid), abs(sigma_mid - sigma_next)
    if a + b == 0:  # a repeated sigma: diffusers' increment is 0 / 0 there; the table refuses a NaN row
        return math.nan, math.nan
    return math.sqrt(a / (a + b)), math.sqrt(b / (a + b))
