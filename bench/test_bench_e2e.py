"""End to end, side by side in one run: fastddpm vs diffusers 0.42.1 on the same random-weight checkpoint,
the same sampler (DDPM), steps and batch.

Baselines: diffusers eager fp32, diffusers eager in the same reduced precision, and (GPU) diffusers with its
U-Net under torch.compile(mode="max-autotune"). fastddpm in each dtype. Each result records ms/step,
images/s (for 1000-step sampling, from ms/step), peak memory (CUDA) and, on GPU, model FLOP utilisation:
FLOPs of one forward counted by torch.utils.flop_counter at batch 1 (2 per multiply-add of every conv,
linear and attention matmul; elementwise work not counted) times batch times steps, over the time, over
the chip's dense bf16 peak (H200: 989 TFLOP/s). Run: `python -m pytest bench/test_bench_e2e.py
--benchmark-enable -s`; results go to bench/results/<machine>-<date>.json and a table is printed.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from bench import e2e_results
from tests import model_factory

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
STEPS = int(os.environ.get("FASTDDPM_BENCH_STEPS", 20 if ON_GPU else 3))
ROUNDS = int(os.environ.get("FASTDDPM_BENCH_ROUNDS", 3))
H200_BF16_DENSE_FLOPS = 989e12
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

MODELS = {"cifar10-32": model_factory.cifar10_config()}
# On CPU the 256 px family (113.7M parameters, ~4 s per diffusers forward here) only on request:
# FASTDDPM_BENCH_256PX=1, with FASTDDPM_BENCH_TAG=256px to keep the day's cifar10-32 results file.
if ON_GPU or os.environ.get("FASTDDPM_BENCH_256PX") == "1":
    MODELS["256px"] = {**model_factory.FAMILY_256_CONFIG}

BATCHES = {"cifar10-32": (1, 16, 64, 256) if ON_GPU else (1, 8), "256px": (1, 16) if ON_GPU else (1,)}
DIFFUSERS_VARIANTS = ["eager-fp32", "eager-bf16"] + (["compile-fp32", "compile-bf16"] if ON_GPU else [])
FASTDDPM_VARIANTS = ["fp32", "bf16"] + (["fp16"] if ON_GPU else [])

_models: dict[str, torch.nn.Module] = {}
_flops: dict[str, int] = {}


def base_unet(name: str):
    if name not in _models:
        _models[name] = model_factory.random_unet(MODELS[name], seed=0).to(DEVICE)
    return _models[name]


def forward_flops(name: str) -> int:
    """FLOPs of one U-Net forward at batch 1 (torch's flop counter: 2 per multiply-add)."""
    if name not in _flops:
        from torch.utils.flop_counter import FlopCounterMode

        unet = base_unet(name)
        x = torch.randn(
            1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size, device=DEVICE
        )
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            unet(x, 10)
        _flops[name] = counter.get_total_flops()
    return _flops[name]


def diffusers_runner(name: str, variant: str, batch: int):
    import diffusers

    mode, dtype = variant.split("-")
    unet = copy.deepcopy(base_unet(name)).to(DTYPES[dtype])
    if mode == "compile":
        unet = torch.compile(unet, mode="max-autotune", fullgraph=True)
    pipe = diffusers.DDPMPipeline(unet, diffusers.DDPMScheduler(variance_type="fixed_large"))
    pipe.set_progress_bar_config(disable=True)
    return lambda: pipe(batch_size=batch, num_inference_steps=STEPS, output_type="pt").images


def fastddpm_runner(name: str, variant: str, batch: int):
    import fastddpm
    from fastddpm.models.unet import UNet2D

    unet = UNet2D.from_diffusers(copy.deepcopy(base_unet(name)).to(DTYPES[variant]))
    pipe = fastddpm.Pipeline(unet, {"variance_type": "fixed_large"})

    def run():
        output = pipe(
            batch_size=batch,
            num_inference_steps=STEPS,
            seed=0,
            noise="philox",
            output_type="pt",
            progress=False,
        )
        run.cuda_graph = output.cuda_graph  # measure() records it: a fallback to eager must show
        return output.images

    return run


def measure(benchmark, name: str, impl: str, variant: str, batch: int, run) -> None:
    if ON_GPU:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def timed():
        images = run()
        if ON_GPU:
            torch.cuda.synchronize()
        return images

    images = benchmark.pedantic(timed, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    assert torch.isfinite(images).all()
    seconds = benchmark.stats.stats.median
    ms_per_step = seconds / STEPS * 1000
    row = {
        "model": name,
        "device": DEVICE,
        "impl": impl,
        "variant": f"{impl}-{variant}",
        "batch": batch,
        "steps": STEPS,
        "rounds": ROUNDS,
        "median_s": seconds,
        "ms_per_step": ms_per_step,
        "images_per_s_1000_steps": batch / ms_per_step,  # 1000 steps take ms_per_step seconds
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if ON_GPU else None,
        "backend_group_norm": _backend_in_use(),
        # fastddpm: "replayed", "off" or "fallback: <why>" (PipelineOutput.cuda_graph); diffusers: None
        "cuda_graph": getattr(run, "cuda_graph", None),
    }
    if ON_GPU:
        row["mfu_vs_bf16_peak"] = forward_flops(name) * batch * STEPS / seconds / H200_BF16_DENSE_FLOPS
        row["gflop_per_forward"] = forward_flops(name) / 1e9
    benchmark.extra_info.update(row)
    e2e_results.record(**row)


def _backend_in_use() -> str:
    from fastddpm import ops

    x = torch.zeros(1, 32, 4, 4, device=DEVICE)
    try:
        return ops.backend_for("group_norm", x, 8, None, None, 1e-6, silu=True)
    except Exception as exc:
        return f"none ({exc})"


CASES = [(name, batch) for name in MODELS for batch in BATCHES[name]]
# torch.compile(max-autotune) takes minutes per shape: on a time-boxed GPU run, compile only these batches.
COMPILE_BATCHES = {
    int(b) for b in os.environ.get("FASTDDPM_BENCH_COMPILE_BATCHES", "1,16,64,256").split(",") if b
}


@pytest.mark.parametrize("name,batch", CASES, ids=[f"{n}-b{b}" for n, b in CASES])
@pytest.mark.parametrize("variant", DIFFUSERS_VARIANTS)
def test_diffusers(benchmark, name, batch, variant):
    if variant.startswith("compile") and (batch not in COMPILE_BATCHES or name != "cifar10-32"):
        pytest.skip("torch.compile baseline not run at this shape (FASTDDPM_BENCH_COMPILE_BATCHES)")
    benchmark.group = f"{name}-b{batch}"
    with torch.no_grad():
        measure(benchmark, name, "diffusers", variant, batch, diffusers_runner(name, variant, batch))


@pytest.mark.parametrize("name,batch", CASES, ids=[f"{n}-b{b}" for n, b in CASES])
@pytest.mark.parametrize("variant", FASTDDPM_VARIANTS)
def test_fastddpm(benchmark, name, batch, variant):
    benchmark.group = f"{name}-b{batch}"
    measure(benchmark, name, "fastddpm", variant, batch, fastddpm_runner(name, variant, batch))


@pytest.mark.parametrize("name,batch", CASES, ids=[f"{n}-b{b}" for n, b in CASES])
def test_fastddpm_fp32_images_match_diffusers(name, batch):
    """The speed rows' float32 fastddpm draws diffusers' images: the same checkpoint, sampler, steps and
    generator (noise="torch"), output in [0, 1]; max |diff| <= 1e-4 on the CPU (1e-3 on a GPU). Recorded with the
    results, so the file says what accuracy the measured speed came with."""
    if batch > 16:
        pytest.skip("parity is checked at batch 16 and below (time-boxed GPU run)")
    import diffusers

    import fastddpm
    from fastddpm.models.unet import UNet2D

    theirs = diffusers.DDPMPipeline(
        copy.deepcopy(base_unet(name)), diffusers.DDPMScheduler(variance_type="fixed_large")
    )
    theirs.set_progress_bar_config(disable=True)
    ours = fastddpm.Pipeline(
        UNet2D.from_diffusers(copy.deepcopy(base_unet(name))), {"variance_type": "fixed_large"}
    )
    # float32 against float32: cuDNN's TF32 convolutions (on by default) round the inputs to 10 mantissa bits,
    # about 1e-3 relative per convolution, which the two engines' different algorithms (NHWC vs NCHW) would not
    # round alike; the speed rows keep the default.
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            expected = theirs(
                batch_size=batch, generator=torch.manual_seed(7), num_inference_steps=STEPS, output_type="np"
            ).images
        got = ours(
            batch_size=batch,
            generator=torch.manual_seed(7),
            num_inference_steps=STEPS,
            noise="torch",
            output_type="np",
            progress=False,
        ).images
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    max_diff = float(abs(got - expected).max())
    e2e_results.record_parity(model=name, device=DEVICE, batch=batch, steps=STEPS, max_abs_diff=max_diff)
    # CPU: measured 3.6e-5 (cifar10-32, Winograd F(4,3) on the 32 px levels) and 3.5e-5 (256 px family), so
    # 1e-4. GPU: not measured yet (cuDNN picks its float32 algorithms per call and layout; TF32 is off
    # above), so 1e-3 until a GPU run says more.
    bound = 1e-4 if torch.device(DEVICE).type == "cpu" else 1e-3
    assert max_diff <= bound, f"fastddpm fp32 vs diffusers fp32: max |diff| {max_diff:.3g} > {bound:g}"


INTERLEAVED_ROUNDS = int(os.environ.get("FASTDDPM_BENCH_INTERLEAVED_ROUNDS", 7))


@pytest.mark.parametrize("name,batch", CASES, ids=[f"{n}-b{b}" for n, b in CASES])
@pytest.mark.parametrize("variant", FASTDDPM_VARIANTS)
def test_interleaved_speedup_over_diffusers_fp32(name, batch, variant):
    """fastddpm in ``variant`` against diffusers eager fp32, timed alternately round by round: on a shared
    machine whose speed drifts over minutes, this ratio is steadier than the one between two
    pytest-benchmark blocks run one after the other. Median over rounds of each, after one warm-up each."""
    import time

    if INTERLEAVED_ROUNDS <= 0:
        pytest.skip("FASTDDPM_BENCH_INTERLEAVED_ROUNDS=0")

    runs = {
        "diffusers": diffusers_runner(name, "eager-fp32", batch),
        "fastddpm": fastddpm_runner(name, variant, batch),
    }
    times = {impl: [] for impl in runs}
    with torch.no_grad():
        for round_index in range(INTERLEAVED_ROUNDS + 1):
            for impl, run in runs.items():
                start = time.perf_counter()
                run()
                if ON_GPU:
                    torch.cuda.synchronize()
                if round_index:  # round 0 warms up
                    times[impl].append(time.perf_counter() - start)
    median = {impl: sorted(t)[len(t) // 2] for impl, t in times.items()}
    e2e_results.record_interleaved(
        model=name,
        device=DEVICE,
        batch=batch,
        steps=STEPS,
        rounds=INTERLEAVED_ROUNDS,
        fastddpm=f"fastddpm-{variant}",
        baseline="diffusers-eager-fp32",
        fastddpm_ms_per_step=median["fastddpm"] / STEPS * 1000,
        baseline_ms_per_step=median["diffusers"] / STEPS * 1000,
        speedup=median["diffusers"] / median["fastddpm"],
    )
