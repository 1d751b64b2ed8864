"""kernels/q_sample.py against reference.q_sample, and the triton backend's dispatch rules.

Without CUDA the kernels run under the Triton interpreter: TRITON_INTERPRET=1 is set here, before any
kernel is defined. With CUDA they are compiled, and the interpreter tests skip (the GPU tests run).
"""

import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the definition of every triton kernel

pytest.importorskip("triton")

from fastddpm import ops  # noqa: E402
from fastddpm.ops import (
    backend_triton,  # noqa: E402
    noise,  # noqa: E402
    reference,  # noqa: E402
)
from tests.tolerances import assert_close, tolerance  # noqa: E402

q_sample_kernels = backend_triton.kernel_module("q_sample")
interpreter_only = pytest.mark.skipif(
    not backend_triton.interpreted(),
    reason="kernels are compiled for CUDA here; interpreter tests run on CPU",
)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ALPHAS_CUMPROD = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()


def _inputs(shape, dtype, channels_last, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=gen).to(dtype)
    timesteps = torch.randint(0, 1000, (shape[0],), generator=gen)
    timesteps[0] = 0  # abar close to 1: sqrt(1 - abar) small
    if channels_last:
        x0 = x0.to(memory_format=torch.channels_last)
    return x0.to(device), timesteps.to(device), ALPHAS_CUMPROD.to(device)


def _noise(mode, shape, dtype, device):
    if mode == "tensor":
        return torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype).to(device)
    if mode == "philox":
        return ops.PhiloxNoise(seed=2**33 + 5, sample_offset=7, stream=0)
    counter = dict(dtype=torch.int64, device=device)
    return ops.PhiloxNoise(
        seed=99, sample_offset=torch.tensor(2**32 - 1, **counter), stream=torch.tensor(3, **counter)
    )


def _check(x0, timesteps, abar, given, block=None):
    kwargs = {} if block is None else dict(block=block)
    x_t, eps = q_sample_kernels.q_sample(x0, timesteps, abar, given, **kwargs)
    if isinstance(given, ops.PhiloxNoise):
        expected_eps = noise.philox_normal(
            given.seed, given.sample_offset, x0.shape[0], x0.shape[1:], given.stream, device=x0.device
        ).to(x0.dtype)
        assert_close(eps, expected_eps, *tolerance(x0.dtype), what="q_sample in-kernel eps")
    else:
        expected_eps = given
        assert torch.equal(eps, given)
    expected = reference.q_sample(x0, timesteps, abar, expected_eps)
    assert x_t.dtype == x0.dtype and eps.dtype == x0.dtype
    assert_close(x_t, expected, *tolerance(x0.dtype), what=f"q_sample {tuple(x0.shape)} {x0.dtype}")
    return x_t, eps


# Every dtype, layout and noise mode appears, without the full product (the interpreter is slow).
CPU_CASES = [
    (torch.float32, False, "tensor"),
    (torch.float32, True, "philox"),
    (torch.float32, False, "philox_device_counters"),
    (torch.float16, True, "tensor"),
    (torch.float16, False, "philox_device_counters"),
    (torch.bfloat16, False, "philox"),
    (torch.bfloat16, True, "philox_device_counters"),
]


@interpreter_only
@pytest.mark.parametrize("dtype, channels_last, noise_mode", CPU_CASES)
def test_q_sample_matches_reference(dtype, channels_last, noise_mode):
    shape = (3, 5, 4, 7)  # odd batch, C not a power of two, H != W; 140 elements = 4.4 blocks of 32
    x0, timesteps, abar = _inputs(shape, dtype, channels_last)
    x_t, eps = _check(x0, timesteps, abar, _noise(noise_mode, shape, dtype, "cpu"), block=32)
    for out in (x_t, eps):
        assert out.is_contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )


@interpreter_only
def test_q_sample_other_ranks_and_strided_inputs():
    x0 = torch.randn(5, 3, 11)  # (B, C, L)
    _check(x0, torch.tensor([0, 10, 500, 998, 999], dtype=torch.int32), ALPHAS_CUMPROD, torch.randn(5, 3, 11))
    strided = torch.randn(3, 7, 6).transpose(1, 2)  # neither contiguous nor channels_last
    _check(strided, torch.tensor([4, 40, 400]), ALPHAS_CUMPROD.double(), ops.PhiloxNoise(1, 0, 2), block=16)


def test_q_sample_launcher_rejects_bad_input_naming_the_argument():
    x0 = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="timesteps"):
        q_sample_kernels.q_sample(x0, torch.tensor([1.0, 2.0]), ALPHAS_CUMPROD, torch.randn_like(x0))
    with pytest.raises(ValueError, match="noise must match x0"):
        q_sample_kernels.q_sample(x0, torch.tensor([1, 2]), ALPHAS_CUMPROD, torch.randn(2, 3, 4, 5))


# ------------------------------------------------------------------------------------------------ dispatch


@interpreter_only
def test_auto_refuses_the_interpreter_on_cpu(monkeypatch):
    monkeypatch.setenv("FASTDDPM_BACKEND", "auto")
    x0, timesteps, abar = _inputs((3, 2, 3, 5), torch.float32, False)
    reasons = backend_triton.why_not_q_sample(x0, timesteps, abar, torch.randn_like(x0))
    assert "interpreter is for tests; set FASTDDPM_BACKEND=triton" in reasons
    assert ops.backend_for("q_sample", x0, timesteps, abar, torch.randn_like(x0)) != "triton"


@interpreter_only
def test_explicit_triton_serves_on_cpu_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("FASTDDPM_BACKEND", "triton")
    x0, timesteps, abar = _inputs((3, 2, 3, 5), torch.float32, False)
    given = ops.PhiloxNoise(3, 1, 2)
    assert ops.backend_for("q_sample", x0, timesteps, abar, given) == "triton"
    x_t, eps = ops.q_sample(x0, timesteps, abar, given)
    assert_close(eps, noise.philox_normal(3, 1, 3, (2, 3, 5), 2), 1e-5, 1e-5, what="ops.q_sample eps")
    assert_close(x_t, reference.q_sample(x0, timesteps, abar, eps), 1e-5, 1e-5, what="ops.q_sample x_t")


@interpreter_only
def test_explicit_triton_that_cannot_serve_raises_with_reasons(monkeypatch):
    monkeypatch.setenv("FASTDDPM_BACKEND", "triton")
    x0 = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(ops.BackendUnavailable, match=r"triton: x0 dtype torch.float64 is not float32"):
        ops.q_sample(x0, torch.tensor([1, 2]), ALPHAS_CUMPROD, torch.randn_like(x0))
    x0 = torch.randn(2, 3, 4, 4, requires_grad=True)
    with pytest.raises(ops.BackendUnavailable, match="require grad"):
        ops.q_sample(x0, torch.tensor([1, 2]), ALPHAS_CUMPROD, torch.randn(2, 3, 4, 4))
    with torch.no_grad():
        assert (
            backend_triton.why_not_q_sample(x0, torch.tensor([1, 2]), ALPHAS_CUMPROD, torch.randn_like(x0))
            == []
        )


def test_cpu_without_the_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("FASTDDPM_BACKEND", "triton")
    monkeypatch.setattr(backend_triton, "interpreted", lambda: False)
    x0 = torch.randn(2, 3, 4, 4)
    reasons = backend_triton.why_not_q_sample(x0, torch.tensor([1, 2]), ALPHAS_CUMPROD, torch.randn_like(x0))
    assert reasons == ["CPU tensors need TRITON_INTERPRET=1 set before the kernels are imported"]


def test_import_fastddpm_and_dispatch_work_without_triton():
    script = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch, fastddpm\n"
        "from fastddpm import ops\nfrom fastddpm.ops import backend_triton\n"
        "x = torch.randn(2, 3, 4, 4)\n"
        "reasons = backend_triton.why_not_group_norm(x, 3, None, None, 1e-5)\n"
        "assert reasons and 'triton' in reasons[0], reasons\n"
        "assert ops.backend_for('group_norm', x, 3, None, None, 1e-5) != 'triton'\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "FASTDDPM_BACKEND"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


# ------------------------------------------------------------------------------------ compile for CUDA

# The richest variant of every kernel, compiled for sm_90 by triton's own compiler (no GPU needed): the
# interpreter runs Python semantics and misses typing and lowering errors that only a compile shows.
_COMPILE_SCRIPT = """
import itertools, triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from fastddpm.ops import backend_triton as bt
assert not bt.interpreted()
def compile(module, kernel, signature, constexprs, options=None):
    fn = getattr(bt.kernel_module(module), kernel)
    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    indexed = {(fn.arg_names.index(name),): value for name, value in constexprs.items()}
    return triton.compile(ASTSource(fn, signature, indexed), target=GPUTarget("cuda", 90, 32), options=options)
i32, counters = "i32", dict(seed="u64", sample_offset="*i64", noise_stream="i64")
in_memory = dict(OFFSET_IN_MEMORY=True, STREAM_IN_MEMORY=False)
compile("philox", "_philox_kernel", dict(words_ptr="*i64", normal_ptr="*fp32", **counters, batch=i32, per_sample=i32),
        dict(**in_memory, WRITE_WORDS=True, BLOCK=1024))
# batch 1: the JIT passes an int argument equal to 1 as a constexpr, so compile that variant too
compile("philox", "_philox_kernel", dict(words_ptr="*i64", normal_ptr="*fp32", **counters, per_sample=i32),
        dict(**in_memory, WRITE_WORDS=True, BLOCK=1024, batch=1))
compile("q_sample", "_q_sample_kernel", dict(x0_ptr="*bf16", eps_ptr="*bf16", out_ptr="*bf16", timesteps_ptr="*i64",
        abar_ptr="*fp32", **counters, per_sample=i32, channels=i32, spatial=i32, blocks_per_sample=i32),
        dict(PHILOX=True, **in_memory, CHANNELS_LAST=True, BLOCK=1024))
for model, prediction, variance, ddim in [("fp16", 1, 2, True), ("fp32", 0, 1, False), ("bf16", 2, 0, True)]:
    compile("sampler_step", "_sampler_step_kernel", dict(model_output_ptr="*" + model, sample_ptr="*fp32",
            coeffs_ptr="*fp32", noise_ptr="*fp32", x_prev_ptr="*fp32", x0_ptr="*fp32", **counters, clip_range="fp32",
            coeffs_stride=i32, per_sample=i32, channels=i32, spatial=i32, blocks_per_sample=i32),
            dict(DDIM=ddim, PREDICTION=prediction, VARIANCE=variance, CLIP=True, USE_CLIPPED=ddim, NOISE=2,
                 **in_memory, CHANNELS_LAST=True, BLOCK=1024))
# float32 exactness: with the launchers' options no a * b + c is contracted into an FMA (torch rounds twice);
# without them the same kernel has FMAs, so the check can tell. Noise from a tensor: Box-Muller's libdevice
# log / cos use FMAs of their own, on purpose.
exact = bt.kernel_module("q_sample").EXACT_FLOAT32
q_fp32 = (dict(x0_ptr="*fp32", eps_ptr="*fp32", out_ptr="*fp32", timesteps_ptr="*i64", abar_ptr="*fp32",
          **counters, per_sample=i32, channels=i32, spatial=i32, blocks_per_sample=i32),
          dict(PHILOX=False, **in_memory, CHANNELS_LAST=False, BLOCK=1024))
assert "fma.rn.f32" in compile("q_sample", "_q_sample_kernel", *q_fp32).asm["ptx"]
assert "fma.rn.f32" not in compile("q_sample", "_q_sample_kernel", *q_fp32, options=exact).asm["ptx"]
step_ptx = compile("sampler_step", "_sampler_step_kernel", dict(model_output_ptr="*fp32", sample_ptr="*fp32",
        coeffs_ptr="*fp32", noise_ptr="*fp32", x_prev_ptr="*fp32", x0_ptr="*fp32", **counters, clip_range="fp32",
        coeffs_stride=i32, per_sample=i32, channels=i32, spatial=i32, blocks_per_sample=i32),
        dict(DDIM=False, PREDICTION=0, VARIANCE=1, CLIP=True, USE_CLIPPED=False, NOISE=1, **in_memory,
             CHANNELS_LAST=False, BLOCK=1024), options=exact).asm["ptx"]
assert "fma.rn.f32" not in step_ptx
multistep = dict(model_output_ptr="*fp32", sample_ptr="*fp32", state_ptr="*fp32", matrix_ptr="*fp32",
                 noise_ptr="*fp32", x_next_ptr="*fp32", next_state_ptr="*fp32", **counters, matrix_stride=i32,
                 plane="i64", per_sample=i32, channels=i32, spatial=i32, blocks_per_sample=i32)
compile("linear_update", "_linear_update_kernel", {**multistep, "model_output_ptr": "*bf16"},
        dict(K=5, NOISE=2, **in_memory, CHANNELS_LAST=True, BLOCK=1024))
multistep_fp32 = (multistep, dict(K=5, NOISE=1, **in_memory, CHANNELS_LAST=False, BLOCK=1024))
assert "fma.rn.f32" in compile("linear_update", "_linear_update_kernel", *multistep_fp32).asm["ptx"]
assert "fma.rn.f32" not in compile("linear_update", "_linear_update_kernel", *multistep_fp32,
                                   options=exact).asm["ptx"]
shape = dict(num_groups=i32, channels=i32, group_channels=i32, spatial=i32)
pointers = dict(x_ptr="*fp16", out_ptr="*fp16", add_ptr="*fp32", weight_ptr="*fp32", bias_ptr="*fp32",
                scale_ptr="*fp32", shift_ptr="*fp32")
flags = dict(HAS_ADD=True, HAS_WEIGHT=True, HAS_BIAS=True, HAS_SCALE_SHIFT=True, SILU=True, CHANNELS_LAST=True)
compile("group_norm", "_group_norm_fused_kernel", dict(**pointers, **shape, eps="fp32"), dict(**flags, BLOCK=4096))
compile("group_norm", "_group_norm_stats_kernel", dict(x_ptr="*fp16", add_ptr="*fp32", partial_ptr="*fp32", **shape,
        chunk=i32), dict(HAS_ADD=True, CHANNELS_LAST=True, BLOCK=1024))
compile("group_norm", "_group_norm_apply_kernel", dict(**pointers, partial_ptr="*fp32", **shape, chunk=i32,
        eps="fp32"), dict(**flags, CHUNKS_POW2=8, BLOCK=1024))
# The batch-invariant implicit GEMM (tl.dot on tensor cores: TF32 / IEEE float32, bf16, fp16). The JIT passes
# the channel strides of NHWC tensors (1) as constexprs; a strided (NCHW) input keeps them runtime ints.
conv = bt.kernel_module("conv_rows")
geometry = dict(rows=i32, height=i32, width=i32, channels=i32, out_height=i32, out_width=i32, out_channels=i32,
                x_sn=i32, x_sh=i32, x_sw=i32, y_sn=i32, y_sh=i32, y_sw=i32, stride_h=i32, stride_w=i32,
                pad_h=i32, pad_w=i32, divisor="fp32")
tiles = dict(BLOCK_M=conv.BLOCK_M, BLOCK_N=conv.BLOCK_N, BLOCK_K=conv.BLOCK_K, ORDERED_SUM=False)
for dtype, precision, kernel, silu in [("fp32", "tf32", 3, False), ("fp32", "ieee", 1, True), ("bf16", "ieee", 3, False),
                                       ("fp16", "ieee", 1, True)]:
    pointers = dict(x_ptr="*" + dtype, w_ptr="*" + dtype, bias_ptr="*fp32", res_ptr="*" + dtype, y_ptr="*" + dtype)
    compile("conv_rows", "_conv_rows_kernel", dict(**pointers, **geometry),
            dict(x_sc=1, y_sc=1, KERNEL_H=kernel, KERNEL_W=kernel, HAS_BIAS=True, HAS_RESIDUAL=True,
                 INPUT_SILU=silu, DIVIDE=True, PRECISION=precision, **tiles))
compile("conv_rows", "_conv_rows_kernel", dict(x_ptr="*fp32", w_ptr="*fp32", bias_ptr="*fp32", res_ptr="*fp32",
        y_ptr="*fp32", **geometry, x_sc=i32, y_sc=i32), dict(KERNEL_H=3, KERNEL_W=3, HAS_BIAS=False,
        HAS_RESIDUAL=False, INPUT_SILU=False, DIVIDE=False, PRECISION="tf32", **tiles))
# The batch-invariant attention, one variant per tile class (heads up to 64, 256 and 512 channels); the last
# dimension's strides are 1 in the blocks' qkv views (constexprs), the other strides runtime ints.
attn = bt.kernel_module("attention_rows")
strides = {f"{t}_s{axis}": i32 for t in "qkvo" for axis in "bhl"}
for dtype, head_dim, precision in [("fp32", 64, "tf32"), ("fp32", 512, "ieee"), ("bf16", 130, "ieee"),
                                   ("fp16", 5, "ieee")]:
    block_d, block_m, block_n = attn.tiles(head_dim)
    compile("attention_rows", "_attention_rows_kernel", dict(q_ptr="*" + dtype, k_ptr="*" + dtype,
            v_ptr="*" + dtype, o_ptr="*" + dtype, length=i32, heads=i32, **strides, scale_log2e="fp32"),
            dict(q_sd=1, k_sd=1, v_sd=1, o_sd=1, HEAD_DIM=head_dim, BLOCK_D=block_d, PRECISION=precision,
                 ORDERED_SUM=False, BLOCK_M=block_m, BLOCK_N=block_n))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the GPU tests compile and run the kernels")
def test_every_kernel_compiles_for_sm90():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


# --------------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, channels_last, noise_mode", CPU_CASES)
def test_cuda_q_sample_matches_reference(dtype, channels_last, noise_mode):
    shape = (256, 3, 32, 32)
    x0, timesteps, abar = _inputs(shape, dtype, channels_last, device="cuda")
    x_t, _ = _check(x0, timesteps, abar, _noise(noise_mode, shape, dtype, "cuda"))
    assert x_t.is_cuda
