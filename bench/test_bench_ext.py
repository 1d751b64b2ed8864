"""fastddpm._C against torch: group_norm + SiLU (CPU and CUDA), attention (CUDA), and the CPU Winograd 3x3
convolution (fastddpm.models.conv.Conv2d's three CPU paths against nn.Conv2d).

Run: python -m pytest bench/test_bench_ext.py --benchmark-enable [-m gpu]. Each benchmark group holds the
extension and its torch counterpart at one shape; extra_info carries GB/s (group_norm: one read of x and
one write of y) so the groups read as a ratio. The CPU part runs anywhere; the CUDA part is marked gpu
(bench/gpu_check.sh runs it on a GPU).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from fastddpm.models import conv
from fastddpm.ops import backend_ext

pytestmark = pytest.mark.skipif(
    not backend_ext.is_built(), reason="fastddpm._C is not built (pip install -e . or .ci/build_ext.sh)"
)

# The U-Net's GroupNorm inputs (32 groups): cifar10-32 at batch 1 and 8 on the CPU; plus 256 px on the GPU.
CIFAR_SHAPES = [(c, s) for c, s in [(128, 32), (256, 16), (256, 8), (256, 4)]]
FAMILY_256_SHAPES = [(128, 256), (256, 64), (512, 16)]


def group_norm_inputs(batch, channels, size, dtype, device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen).to(device=device, dtype=dtype)
    weight = torch.randn(channels, generator=gen).to(device=device, dtype=dtype)
    bias = torch.randn(channels, generator=gen).to(device=device, dtype=dtype)
    return x, weight, bias


def group_norm_silu_torch(x, weight, bias):
    return F.silu(F.group_norm(x, 32, weight, bias, 1e-6))


def group_norm_silu_ext(x, weight, bias):
    return backend_ext.group_norm(x, 32, weight, bias, 1e-6, silu=True)


def record_bandwidth(benchmark, nbytes):
    stats = getattr(benchmark, "stats", None)
    if stats:  # absent under --benchmark-disable (the default in pyproject.toml)
        benchmark.extra_info["GB/s"] = round(nbytes / stats.stats.mean / 1e9, 2)


def run_group_norm(benchmark, impl, batch, channels, size, dtype, device, sync):
    x, weight, bias = group_norm_inputs(batch, channels, size, dtype, device)
    fn = group_norm_silu_ext if impl == "ext" else group_norm_silu_torch
    benchmark.group = f"group_norm+silu {device} {dtype} {(batch, channels, size, size)}"

    def call():
        out = fn(x, weight, bias)
        sync()
        return out

    with torch.inference_mode():
        out = benchmark(call)
    torch.testing.assert_close(out, group_norm_silu_torch(x, weight, bias), atol=2e-2, rtol=2e-2)
    record_bandwidth(benchmark, 2 * x.numel() * x.element_size())


@pytest.mark.parametrize("impl", ["ext", "torch"])
@pytest.mark.parametrize("channels,size", CIFAR_SHAPES)
@pytest.mark.parametrize("batch", [1, 8])
def test_cpu_group_norm_silu(benchmark, impl, batch, channels, size):
    run_group_norm(benchmark, impl, batch, channels, size, torch.float32, "cpu", lambda: None)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["ext", "torch"])
@pytest.mark.parametrize("channels,size", CIFAR_SHAPES + FAMILY_256_SHAPES)
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_group_norm_silu(benchmark, impl, batch, channels, size, dtype):
    run_group_norm(benchmark, impl, batch, channels, size, dtype, "cuda", torch.cuda.synchronize)


ATTENTION_IMPLS = {
    "ext": lambda q, k, v: backend_ext.attention(q, k, v),
    "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
    "sdpa_math": None,  # below: SDPA restricted to its math backend, torch's only path for every D = 512 dtype
}


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["ext", "sdpa", "sdpa_math"])
@pytest.mark.parametrize("d", [256, 512])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_attention(benchmark, impl, d, batch, dtype):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, 1, 256, d, generator=gen).to(device="cuda", dtype=dtype) for _ in range(3))
    benchmark.group = f"attention cuda {dtype} {(batch, 1, 256, d)}"

    def call():
        if impl == "sdpa_math":
            with sdpa_kernel(SDPBackend.MATH):
                out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = ATTENTION_IMPLS[impl](q, k, v)
        torch.cuda.synchronize()
        return out

    with torch.inference_mode():
        out = benchmark(call)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=2e-2, rtol=2e-2)


# The U-Net's 3x3 stride-1 convolutions at cifar10-32 (input channels, size, output channels), including the
# up path's concatenated inputs.
CIFAR_CONVS = [(128, 32, 128), (384, 32, 128), (256, 16, 256), (512, 16, 256), (256, 8, 256), (256, 4, 256)]


@pytest.mark.parametrize("impl", ["nn.Conv2d", "direct", "winograd2", "winograd4"])
@pytest.mark.parametrize("channels,size,out_channels", CIFAR_CONVS)
@pytest.mark.parametrize("batch", [1, 8])
def test_cpu_conv3x3(benchmark, impl, batch, channels, size, out_channels, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    reference = nn.Conv2d(channels, out_channels, 3, padding=1)
    module = reference if impl == "nn.Conv2d" else conv.Conv2d(channels, out_channels, 3, padding=1)
    module.load_state_dict(reference.state_dict())
    if impl != "nn.Conv2d":
        monkeypatch.setenv("FASTDDPM_CPU_CONV", impl)
        monkeypatch.setenv("FASTDDPM_BATCH_INVARIANT", "0")  # else "direct" would be Winograd's too
    x = torch.randn(batch, channels, size, size, generator=gen).contiguous(memory_format=torch.channels_last)
    benchmark.group = f"conv3x3 cpu float32 {(batch, channels, size, size)} -> {out_channels}"
    with torch.no_grad():
        out = benchmark(module, x)
        expected = reference(x)
    scale = float(expected.abs().max())
    torch.testing.assert_close(out, expected, atol=2e-5 * scale, rtol=0)
    stats = getattr(benchmark, "stats", None)
    if stats:
        flops = 2 * 9 * batch * size * size * channels * out_channels  # direct convolution's count
        benchmark.extra_info["GFLOP/s (direct count)"] = round(flops / stats.stats.mean / 1e9, 1)


# The U-Net's matrix products, (rows, K, N): the time-embedding MLP at one row (the embedding is computed
# once per step) and its fused projections into every ResNet block (cifar10-32: 5632 columns); the
# attention block's QKV and output projections at 16x16 (batch 1 and 8); a 1x1 shortcut at 32x32.
MATMUL_SHAPES = [(1, 128, 512), (1, 512, 512), (1, 512, 5632), (256, 256, 768), (2048, 256, 768),
                 (2048, 256, 256), (8192, 384, 128)]  # fmt: skip


@pytest.mark.parametrize("impl", ["matmul_rows", "torch.addmm"])
@pytest.mark.parametrize("rows,k,n", MATMUL_SHAPES)
def test_cpu_matmul_rows(benchmark, impl, rows, k, n):
    """fastddpm._C's batch-invariant product (each output summed over k in one order, whatever the rows)
    against MKL's addmm, which picks its kernel by shape."""
    gen = torch.Generator().manual_seed(0)
    x, weight, bias = torch.randn(rows, k, generator=gen), torch.randn(k, n, generator=gen), torch.randn(n)
    packed = backend_ext.pack_matmul_weight(weight)
    benchmark.group = f"matmul cpu float32 ({rows} x {k}) @ ({k} x {n})"
    with torch.no_grad():
        if impl == "matmul_rows":
            out = benchmark(backend_ext.matmul_rows, x, packed, n, bias)
        else:
            out = benchmark(torch.addmm, bias, x, weight)
    torch.testing.assert_close(out, torch.addmm(bias, x, weight), atol=2e-4 * k**0.5, rtol=0)
    stats = getattr(benchmark, "stats", None)
    if stats:
        benchmark.extra_info["GFLOP/s"] = round(2 * rows * k * n / stats.stats.mean / 1e9, 1)
