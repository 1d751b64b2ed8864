"""The fast samplers through the pipeline against diffusers' standard loop with the same scheduler class
and config: x_T * init_noise_sigma, then scale_model_input, the U-Net and step at every timestep."""

import pytest
import torch

import fastddpm
from fastddpm.schedulers import samplers
from tests import model_factory
from tests.cpu_capability import needs_inductor_vector_capability
from tests.tolerances import assert_close

# module-level skip where diffusers is absent (the GPU image), not a collection error
diffusers = pytest.importorskip("diffusers")

# measured max |ours - diffusers| over the cases below (images in [0, 1]), every sampler through the
# linear-table plans in the sampling loop: 1.6e-6 (dpm++2m-sde; the others 4.2e-7 .. 1.2e-6: float32 U-Net and the
# table's folded coefficients; kdpm2 / kdpm2-a 8.3e-7 .. 1.5e-6; lms 4.2e-7 .. 6.0e-7; dpm++2s / 3s
# 5.4e-7 .. 8.9e-7, dpm++2s-sde 1.7e-6; sa-solver 6.3e-7 .. 9.5e-7). The bound for pipelines is 1e-3.
PIPELINE_TOL = 1e-5
TRAIN_STEPS = 200


@pytest.fixture(scope="module")
def small_unet():
    config = model_factory.small_cifar10_config(
        sample_size=[16, 8], block_out_channels=[16, 24, 24, 24], norm_num_groups=4
    )
    return model_factory.random_unet(config, seed=3)


def diffusers_loop(unet, scheduler, steps, batch, seed):
    """diffusers' standard loop, with diffusers' scheduler and diffusers' randn_tensor."""
    from diffusers.utils.torch_utils import randn_tensor

    generator = torch.manual_seed(seed)
    scheduler.set_timesteps(steps)
    shape = (batch, unet.config.in_channels, *unet.config.sample_size)
    x = randn_tensor(shape, generator=generator, dtype=torch.float32) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        out = unet(model_input, t).sample
        kwargs = {"generator": generator} if "generator" in scheduler.step.__code__.co_varnames else {}
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


CASES = [
    ("dpm++2m", 9, {}, False),
    ("dpm++2m", 9, {"prediction_type": "v_prediction"}, True),
    ("dpm++3m", 11, {}, True),
    ("dpm++2m-sde", 9, {}, False),
    ("dpm++2m-sde", 7, {"prediction_type": "v_prediction"}, True),
    ("euler", 9, {}, True),
    ("euler", 7, {"prediction_type": "v_prediction"}, False),
    ("euler-a", 9, {}, False),
    ("euler-a", 7, {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, False),
    ("heun", 5, {}, True),
    ("heun", 5, {"prediction_type": "v_prediction"}, False),
    ("unipc", 9, {}, True),
    ("unipc", 7, {"prediction_type": "v_prediction"}, False),
    ("deis", 9, {}, True),
    ("deis", 7, {"prediction_type": "v_prediction"}, False),
    ("pndm", 9, {}, False),
    ("pndm", 7, {"prediction_type": "v_prediction", "skip_prk_steps": True}, False),
    ("kdpm2", 5, {}, True),
    ("kdpm2", 5, {"prediction_type": "v_prediction"}, False),
    ("kdpm2-a", 5, {}, False),
    ("kdpm2-a", 5, {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, True),
    ("lms", 9, {}, False),
    ("lms", 7, {"prediction_type": "v_prediction", "timestep_spacing": "leading"}, True),
    ("dpm++2s", 9, {}, False),
    ("dpm++2s", 8, {"prediction_type": "v_prediction"}, True),
    ("dpm++3s", 10, {}, True),
    ("dpm++2s-sde", 7, {}, False),
    ("sa-solver", 9, {}, False),
    ("sa-solver", 7, {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, True),
    # the Brownian tree's seed: config.noise_sampler_seed is None, so both draw it from torch's global RNG
    # (here the generator) after x_T
    ("dpm-sde", 5, {}, False),
    ("dpm-sde", 5, {"prediction_type": "v_prediction", "timestep_spacing": "leading"}, True),
]


@pytest.mark.parametrize("name,steps,overrides,karras", CASES)
def test_sampler_matches_diffusers_loop(small_unet, name, steps, overrides, karras):
    config = model_factory.ddpm_scheduler_config(num_train_timesteps=TRAIN_STEPS, **overrides)
    theirs_pipe = diffusers.DDPMPipeline(small_unet, diffusers.DDPMScheduler.from_config(config))
    ours = fastddpm.Pipeline.from_diffusers(theirs_pipe)
    cls_name, sampler_overrides = samplers.SAMPLERS[name]
    karras_override = {"use_karras_sigmas": True} if karras else {}
    their_scheduler = getattr(diffusers, cls_name).from_config(config, **sampler_overrides, **karras_override)
    expected = diffusers_loop(small_unet, their_scheduler, steps, batch=3, seed=11)
    got = ours(
        batch_size=3, generator=torch.manual_seed(11), num_inference_steps=steps, sampler=name,
        karras=karras, output_type="pt", progress=False,
    ).images  # fmt: skip
    print(f"MEASURED {name} {overrides} karras={karras}: {(got - expected).abs().max().item():.2e}")
    assert_close(got, expected, PIPELINE_TOL, 0, f"{name} {overrides} karras={karras}")


def test_pipe_scheduler_from_config_is_used(small_unet):
    config = model_factory.ddpm_scheduler_config(num_train_timesteps=TRAIN_STEPS)
    ours = fastddpm.Pipeline.from_diffusers(
        diffusers.DDPMPipeline(small_unet, diffusers.DDPMScheduler.from_config(config))
    )
    ours.scheduler = fastddpm.DPMSolverMultistepScheduler.from_config(ours.scheduler.config)
    a = ours(batch_size=2, seed=1, num_inference_steps=6, output_type="pt", progress=False).images
    b = ours(
        batch_size=2, seed=1, num_inference_steps=6, sampler="dpm++2m", output_type="pt", progress=False
    ).images
    assert torch.equal(a, b)  # dpm++2m is this class with this config: the same table and loop


def test_philox_noise_is_independent_of_batch_for_stochastic_samplers(small_unet):
    config = model_factory.ddpm_scheduler_config(num_train_timesteps=TRAIN_STEPS)
    ours = fastddpm.Pipeline.from_diffusers(
        diffusers.DDPMPipeline(small_unet, diffusers.DDPMScheduler.from_config(config))
    )
    for name in ("euler-a", "dpm++2m-sde", "sa-solver"):
        kwargs = dict(
            num_inference_steps=5, sampler=name, noise="philox", seed=4, output_type="pt", progress=False
        )
        whole = ours(batch_size=3, **kwargs).images
        part = ours(batch_size=1, sample_offset=2, **kwargs).images
        assert_close(part[0], whole[2], 1e-5, 1e-5, f"{name} philox sample 2")


def test_karras_is_refused_where_the_sampler_has_none(small_unet):
    config = model_factory.ddpm_scheduler_config(num_train_timesteps=TRAIN_STEPS)
    ours = fastddpm.Pipeline.from_diffusers(
        diffusers.DDPMPipeline(small_unet, diffusers.DDPMScheduler.from_config(config))
    )
    for name in ("ddim", "euler-a"):
        with pytest.raises(ValueError, match="Karras"):
            ours(batch_size=1, sampler=name, karras=True, num_inference_steps=2, progress=False)


@pytest.mark.parametrize("name", [n for n in samplers.NAMES if n not in ("ddpm", "ddim")])
def test_every_fast_sampler_runs_table_driven(small_unet, name, monkeypatch):
    """No sampler falls back to diffusers' eager loop: it would raise here."""
    from fastddpm.engine import runner

    def eager(*args, **kwargs):
        raise AssertionError(f"{name} ran the eager scheduler loop")

    monkeypatch.setattr(runner, "run_eager_loop", eager)
    ours = fastddpm.Pipeline.from_diffusers(
        diffusers.DDPMPipeline(small_unet, diffusers.DDPMScheduler(num_train_timesteps=TRAIN_STEPS))
    )
    out = ours(batch_size=1, num_inference_steps=4, sampler=name, seed=0, noise="philox", progress=False)
    assert out.cuda_graph == "off"  # the CPU default; on CUDA the same loop is captured


def test_a_nonlinear_config_runs_eagerly_and_says_why_when_a_graph_was_asked(small_unet, monkeypatch):
    ours = fastddpm.Pipeline.from_diffusers(
        diffusers.DDPMPipeline(small_unet, diffusers.DDPMScheduler(num_train_timesteps=TRAIN_STEPS))
    )
    scheduler = fastddpm.DPMSolverMultistepScheduler(num_train_timesteps=TRAIN_STEPS, thresholding=True)
    out = ours(
        batch_size=1, num_inference_steps=4, sampler=scheduler, seed=0, progress=False, use_cuda_graph=True
    )
    assert out.cuda_graph.startswith("fallback: DPMSolverMultistepScheduler runs diffusers' loop eagerly")
    assert "dynamic thresholding is not a linear update" in out.cuda_graph


@pytest.mark.slow  # torch.compile: about 35 s on 2 cores
@needs_inductor_vector_capability
def test_fast_samplers_take_channels_last_and_compile(small_unet):
    """channels_last (the CPU default) and compile apply to the table-driven loop as to DDPM / DDIM: the
    loop's buffers take the network's layout and the images agree with NCHW eager ones (measured: NHWC vs
    NCHW 1.1e-6, compiled vs eager 9.5e-7)."""
    pipe = fastddpm.Pipeline.from_diffusers(
        diffusers.DDPMPipeline(small_unet, diffusers.DDPMScheduler(num_train_timesteps=TRAIN_STEPS))
    )
    common = dict(
        batch_size=2, num_inference_steps=3, sampler="unipc", seed=5, noise="philox", output_type="pt",
        progress=False,
    )  # fmt: skip
    nchw = pipe(channels_last=False, **common).images
    ((loop, _, _),) = pipe.engine._loops.values()
    assert loop.x.is_contiguous() and loop.state[0].is_contiguous()
    nhwc = pipe(**common).images
    ((loop, _, _),) = pipe.engine._loops.values()
    assert loop.x.is_contiguous(memory_format=torch.channels_last)
    assert loop.state[1].is_contiguous(memory_format=torch.channels_last)
    print(f"MEASURED NHWC vs NCHW {(nhwc - nchw).abs().max().item():.2e}")
    assert_close(nhwc, nchw, 5e-6, 0, "unipc NHWC vs NCHW")
    compiled = pipe(compile=True, **common).images
    print(f"MEASURED compiled vs eager {(compiled - nchw).abs().max().item():.2e}")
    assert_close(compiled, nchw, 5e-6, 0, "unipc compiled vs eager")


def test_dpm_solver_on_a_learned_variance_model_matches_diffusers_table_driven(monkeypatch):
    """A 6-channel (mean + variance) net: DPM-Solver reads the mean half, in the table loop as in diffusers
    (measured max |diff| 6.0e-7)."""
    from fastddpm.engine import runner

    config = model_factory.small_cifar10_config(
        sample_size=[8, 8], block_out_channels=[16, 24, 24, 24], norm_num_groups=4, out_channels=6
    )
    unet = model_factory.random_unet(config, seed=4)
    scheduler_config = model_factory.ddpm_scheduler_config(
        num_train_timesteps=TRAIN_STEPS, variance_type="learned_range"
    )
    ours = fastddpm.Pipeline.from_diffusers(
        diffusers.DDPMPipeline(unet, diffusers.DDPMScheduler.from_config(scheduler_config))
    )
    monkeypatch.setattr(runner, "run_eager_loop", None)  # must not be reached
    theirs = diffusers.DPMSolverMultistepScheduler.from_config(scheduler_config)
    expected = diffusers_loop(unet, theirs, 6, batch=2, seed=5)
    got = ours(
        batch_size=2, generator=torch.manual_seed(5), num_inference_steps=6, sampler="dpm++2m", output_type="pt",
        progress=False,
    ).images  # fmt: skip
    inside = ((expected > 0) & (expected < 1)).double().mean()  # measured 23% (88 of 384 values)
    assert inside > 0.15, f"only {inside:.0%} of the pixels are unclamped: the comparison would say little"
    print(f"MEASURED learned-variance dpm++2m: {(got - expected).abs().max().item():.2e}")
    assert_close(got, expected, PIPELINE_TOL, 0, "dpm++2m on a learned-variance net")


def test_unipc_with_flow_sigmas_as_the_sampler_matches_diffusers(small_unet, monkeypatch):
    """A scheduler object with flow sigmas (alpha = 1 - sigma, Karras-mapped) runs table-driven in the
    pipeline and matches diffusers' loop with diffusers' class (measured 8.1e-7)."""
    from fastddpm.engine import runner

    monkeypatch.setattr(runner, "run_eager_loop", None)  # must not be reached
    config = model_factory.ddpm_scheduler_config(num_train_timesteps=TRAIN_STEPS)
    ours = fastddpm.Pipeline.from_diffusers(
        diffusers.DDPMPipeline(small_unet, diffusers.DDPMScheduler.from_config(config))
    )
    flow = {
        "use_flow_sigmas": True,
        "use_karras_sigmas": True,
        "flow_shift": 3.0,
        "final_sigmas_type": "sigma_min",
    }
    expected = diffusers_loop(
        small_unet, diffusers.UniPCMultistepScheduler.from_config(config, **flow), 6, 2, 7
    )
    scheduler = fastddpm.UniPCMultistepScheduler.from_config(config, **flow)
    got = ours(
        batch_size=2, generator=torch.manual_seed(7), num_inference_steps=6, sampler=scheduler, output_type="pt",
        progress=False,
    ).images  # fmt: skip
    print(f"MEASURED unipc flow sigmas: {(got - expected).abs().max().item():.2e}")
    assert_close(got, expected, PIPELINE_TOL, 0, "unipc flow sigmas")
