"""The Triton kernels against the torch reference and torch.compile of the reference, in GB/s (CUDA only).

Run: python -m pytest bench/test_bench_kernels.py --benchmark-enable -m gpu. Each benchmark group holds
one op at one shape with impl = triton / torch / compiled; extra_info carries the bytes the op must move
at least (one read of each input, one write of each output) and the GB/s that gives, so groups read as
fractions of the memory bandwidth (H200: ~4.8 TB/s). Without CUDA everything here skips.
"""

import pytest
import torch

from fastddpm import ops
from fastddpm.ops import backend_torch, backend_triton, reference
from fastddpm.schedulers.ddpm import ddpm_row

pytestmark = pytest.mark.gpu
pytest.importorskip("triton")

IMPLS = ["triton", "torch", "compiled"]
ALPHAS_CUMPROD = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()
SAMPLE_SHAPES = [(256, 3, 32, 32), (64, 3, 256, 256)]
CIFAR_GROUP_NORM = [(128, 32), (256, 16), (256, 8), (256, 4)]  # (channels, size), 32 groups
FAMILY_256_GROUP_NORM = [(128, 256), (256, 64), (512, 16)]
_compiled = {}


def _compiled_fn(fn):
    # dynamic=True: one compile serves every shape (a compile per shape would cost the lent GPU minutes).
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=True)
    return _compiled[fn]


def _run(benchmark, fn, nbytes):
    def call():
        out = fn()
        torch.cuda.synchronize()
        return out

    with torch.inference_mode():
        call()  # warm-up: kernel compiles and torch.compile happen outside the timing
        # Fixed rounds keep the whole file within a few minutes of device time; 10 launches per round
        # amortise the synchronize of the small (cifar batch 1) cases.
        out = benchmark.pedantic(call, rounds=20, iterations=10, warmup_rounds=2)
    benchmark.extra_info["bytes_moved"] = nbytes
    stats = getattr(benchmark, "stats", None)
    if stats:  # absent under --benchmark-disable (the default in pyproject.toml)
        benchmark.extra_info["GB/s"] = round(nbytes / stats.stats.mean / 1e9, 1)
    return out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("noise_mode", ["tensor", "philox"])
@pytest.mark.parametrize("shape", SAMPLE_SHAPES, ids=str)
def test_q_sample(benchmark, shape, noise_mode, impl):
    x0 = torch.randn(shape, device="cuda")
    timesteps = torch.randint(0, 1000, shape[:1], device="cuda")
    abar = ALPHAS_CUMPROD.cuda()
    given = torch.randn_like(x0) if noise_mode == "tensor" else ops.PhiloxNoise(0, 0, 1)
    fn = {"triton": backend_triton.q_sample, "torch": backend_torch.q_sample}.get(impl)
    fn = fn or _compiled_fn(backend_torch.q_sample)
    benchmark.group = f"q_sample {shape} noise={noise_mode}"
    # x0 read, x_t written, eps read (tensor) or written (philox): three passes over float32 samples.
    _run(benchmark, lambda: fn(x0, timesteps, abar, given), 3 * x0.numel() * 4)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("noise_mode", ["tensor", "philox"])
@pytest.mark.parametrize("model_dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SAMPLE_SHAPES, ids=str)
def test_sampler_step(benchmark, shape, model_dtype, noise_mode, impl):
    sample = torch.randn(shape, device="cuda")
    model_output = torch.randn(shape, device="cuda").to(model_dtype)
    table = torch.stack([ddpm_row(ALPHAS_CUMPROD, t, t - 1, "fixed_small") for t in (500, 1)]).cuda()
    coeffs = table[torch.tensor(0, device="cuda")]
    counter = dict(dtype=torch.int64, device="cuda")
    given = (
        torch.randn_like(sample)
        if noise_mode == "tensor"
        else ops.PhiloxNoise(0, torch.tensor(0, **counter), torch.tensor(3, **counter))
    )
    fn = {"triton": backend_triton.sampler_step, "torch": backend_torch.sampler_step}.get(impl)
    fn = fn or _compiled_fn(backend_torch.sampler_step)
    benchmark.group = f"sampler_step {shape} model={model_dtype} noise={noise_mode}"
    passes = model_output.element_size() + 4 * (1 + 2 + (noise_mode == "tensor"))  # x_t, x_prev, x0_hat, eps
    _run(benchmark, lambda: fn(model_output, sample, coeffs, given, kind="ddpm"), sample.numel() * passes)


def _group_norm_inputs(batch, channels, size, dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen).to(device="cuda", dtype=dtype)
    weight, bias = (torch.randn(channels, generator=gen).cuda() for _ in range(2))
    return x, weight, bias


def _group_norm_silu_torch(x, weight, bias):
    return torch.nn.functional.silu(
        torch.nn.functional.group_norm(x, 32, weight.to(x.dtype), bias.to(x.dtype), 1e-6)
    )


GROUP_NORM_CASES = [
    (batch, channels, size, dtype, impl)
    for batch_sizes, shapes in (((1, 64), CIFAR_GROUP_NORM), ((1, 8), FAMILY_256_GROUP_NORM))
    for batch in batch_sizes
    for channels, size in shapes
    for dtype in (torch.float32, torch.bfloat16)
    for impl in IMPLS + ["torch_group_norm_silu"]  # the last: torch's own group_norm + silu, the target
    if dtype == torch.float32 or impl != "compiled"  # one dtype of the compiled reference is enough
]


@pytest.mark.parametrize("batch, channels, size, dtype, impl", GROUP_NORM_CASES)
def test_group_norm_silu(benchmark, batch, channels, size, dtype, impl):
    x, weight, bias = _group_norm_inputs(batch, channels, size, dtype)
    fns = {
        "triton": lambda: backend_triton.group_norm(x, 32, weight, bias, 1e-6, silu=True),
        "torch": lambda: reference.group_norm(x, 32, weight, bias, 1e-6, silu=True),
        "compiled": lambda: _compiled_fn(reference.group_norm)(x, 32, weight, bias, 1e-6, silu=True),
        "torch_group_norm_silu": lambda: _group_norm_silu_torch(x, weight, bias),  # the target to beat
    }
    benchmark.group = f"group_norm+silu {(batch, channels, size, size)} {dtype}"
    out = _run(benchmark, fns[impl], 2 * x.numel() * x.element_size())  # one read of x, one write of y
    expected = reference.group_norm(x, 32, weight, bias, 1e-6, silu=True)
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)
