"""A tiny run of every CUDA kernel path of fastddpm._C, for compute-sanitizer.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 python bench/sanitizer_case.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python bench/sanitizer_case.py --quick

Covers group_norm's shared-memory kernel and split reduction, NCHW and channels-last, 16-byte vector and
scalar accesses, float32 and bfloat16; attention at D = 24 (partial warps), 300 (the D <= 512 path) and a
sequence length that is not a multiple of the 16-row / 16-key tiles. Exits non-zero on a wrong result.

The references are computed on the CPU, so the sanitizer watches fastddpm's kernels and not cuBLAS's; with
PYTORCH_NO_CUDA_MEMORY_CACHING=1 every tensor is its own allocation, so an overrun past a tensor's end
leaves its allocation (inside one of torch's cached blocks memcheck would not see it). ``--quick`` runs one
case of each kernel in float32 (racecheck instruments every shared-memory access and is ~100x slower).
"""

import sys

import torch

from fastddpm.ops import backend_ext, reference


def check(name, actual, expected, tol):
    error = (actual.float().cpu() - expected.float()).abs().max().item()
    print(f"{name}: max |error| {error:.3g}")
    return error <= tol


def on_cpu(kwargs: dict) -> dict:
    return {name: value.cpu() if isinstance(value, torch.Tensor) else value for name, value in kwargs.items()}


def main(quick: bool = False) -> int:
    if not torch.cuda.is_available() or not backend_ext.cuda_kernels_built():
        print("needs a CUDA device and fastddpm._C built with CUDA kernels")
        return 2
    dtypes = (torch.float32,) if quick else (torch.float32, torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    ok = True
    # (shape, groups): one group of 3 x 35 (shared, scalar: 35 % 4 != 0), 4 x 64 (shared, vector),
    # 4 x 80 x 80 = 25600 elements (split reduction, vector), 3 x 70 x 61 (split, scalar).
    cases = [((3, 6, 5, 7), 2), ((2, 8, 8, 8), 2), ((1, 8, 80, 80), 2), ((1, 6, 70, 61), 2)]
    for shape, groups in cases[1:3] if quick else cases:  # quick: one shared-memory, one split reduction
        for dtype in dtypes:
            for channels_last in (False,) if quick else (False, True):
                x = torch.randn(shape, generator=gen).to(dtype=dtype)
                if channels_last:
                    x = x.to(memory_format=torch.channels_last)
                n, c = shape[:2]
                weight, bias = (torch.randn(c, generator=gen).cuda() for _ in range(2))
                add, scale, shift = (torch.randn(n, c, generator=gen).cuda() for _ in range(3))
                x = x.cuda()
                kwargs = dict(add=add, scale=scale, shift=shift, silu=True)
                actual = backend_ext.group_norm(x, groups, weight, bias, 1e-6, **kwargs)
                expected = reference.group_norm(
                    x.cpu(), groups, weight.cpu(), bias.cpu(), 1e-6, **on_cpu(kwargs)
                )
                layout = "channels_last" if channels_last else "nchw"
                ok &= check(f"group_norm {shape} {dtype} {layout}", actual, expected, 2e-2)
    attention_cases = [(2, 2, 19, 35, 24), (1, 1, 17, 20, 300)]
    for batch, heads, len_q, len_k, d in attention_cases[:1] if quick else attention_cases:
        for dtype in dtypes:
            q, k, v = (
                torch.randn(batch, heads, length, d, generator=gen).to(device="cuda", dtype=dtype)
                for length in (len_q, len_k, len_k)
            )
            actual = backend_ext.attention(q, k, v)
            ok &= check(
                f"attention {(batch, heads, len_q, len_k, d)} {dtype}",
                actual,
                reference.attention(q.cpu(), k.cpu(), v.cpu()),
                2e-2,
            )
    torch.cuda.synchronize()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv[1:]))
