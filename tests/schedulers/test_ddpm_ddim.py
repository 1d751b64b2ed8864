"""The schedulers against diffusers 0.42.1: the whole config matrix, a deterministic dummy model, a seeded
generator, every step of a full loop (skipped steps included)."""

import itertools

import numpy as np
import pytest
import torch

import fastddpm
from tests.tolerances import assert_close

diffusers = pytest.importorskip("diffusers")  # the parity baseline; the GPU image lacks it

SHAPE = (3, 2, 5, 7)  # odd batch, H != W
# The rows and steps reproduce diffusers bit for bit (measured: 0 in every comparison of this file), so any
# difference is a bug: the step tables compute each coefficient with diffusers' float32 operations, in order.
TOL = 0.0


def dummy_model(x: torch.Tensor, t: int, learned: bool) -> torch.Tensor:
    """A deterministic stand-in for a U-Net: smooth in x and t, bounded; variance channels in (0.1, 0.9)."""
    out = torch.sin(0.7 * x + t / 97.0) * 1.3
    if learned:
        out = torch.cat([out, 0.5 + 0.4 * torch.cos(x - t / 53.0)], dim=1)
    return out


def run_loop(scheduler, steps, learned=False, seed=0, step_kwargs=None, custom=None):
    if custom is not None:
        scheduler.set_timesteps(timesteps=custom)
    else:
        scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=generator) * 1.5
    trace = []
    for t in scheduler.timesteps:
        out = scheduler.step(
            dummy_model(x, int(t), learned), t, x, generator=generator, **(step_kwargs or {})
        )
        trace.append((int(t), out.prev_sample, out.pred_original_sample))
        x = out.prev_sample
    return trace


def compare(ours, theirs, what, tol=TOL):
    assert [t for t, _, _ in ours] == [t for t, _, _ in theirs], f"{what}: timesteps differ"
    for (t, prev_a, x0_a), (_, prev_b, x0_b) in zip(ours, theirs, strict=True):
        assert_close(x0_a, x0_b, tol, tol, f"{what} x0 at t={t}")
        assert_close(prev_a, prev_b, tol, tol, f"{what} prev at t={t}")


DDPM_VARIANCES = ["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"]
PREDICTIONS = ["epsilon", "sample", "v_prediction"]
CLIPS = [
    {"clip_sample": False},
    {"clip_sample": True, "clip_sample_range": 1.0},
    {"clip_sample": True, "clip_sample_range": 2.5},
    {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
]


@pytest.mark.parametrize(
    "variance_type,prediction_type,clip", list(itertools.product(DDPM_VARIANCES, PREDICTIONS, CLIPS))
)
def test_ddpm_matches_diffusers_variance_prediction_clip(variance_type, prediction_type, clip):
    config = dict(
        num_train_timesteps=200, variance_type=variance_type, prediction_type=prediction_type, **clip
    )
    learned = variance_type.startswith("learned")
    ours = run_loop(fastddpm.DDPMScheduler(**config), 12, learned)
    theirs = run_loop(diffusers.DDPMScheduler(**config), 12, learned)
    compare(ours, theirs, f"ddpm {config}")


SPACINGS = [
    {"timestep_spacing": "leading", "steps_offset": 0},
    {"timestep_spacing": "leading", "steps_offset": 1},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "linspace"},
]
SCHEDULES = [
    {"beta_schedule": "linear"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "linear", "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
    {"trained_betas": np.linspace(1e-4, 0.05, 200).tolist()},
]


@pytest.mark.parametrize("spacing,schedule", list(itertools.product(SPACINGS, SCHEDULES)))
@pytest.mark.parametrize("steps", [7, 200])  # 7 of 200 steps skips steps unevenly; 200 is every step
def test_ddpm_matches_diffusers_spacing_schedule(spacing, schedule, steps):
    config = dict(num_train_timesteps=200, variance_type="fixed_large", **spacing, **schedule)
    if steps == 200 and spacing.get("steps_offset"):
        pytest.skip("leading spacing with an offset at every step leaves the schedule (diffusers too)")
    ours = run_loop(fastddpm.DDPMScheduler(**config), steps)
    theirs = run_loop(diffusers.DDPMScheduler(**config), steps)
    compare(ours, theirs, f"ddpm {config} steps={steps}")


def test_ddpm_sigmoid_schedule_matches_diffusers():
    config = dict(num_train_timesteps=100, beta_schedule="sigmoid", beta_end=0.03)
    compare(
        run_loop(fastddpm.DDPMScheduler(**config), 9),
        run_loop(diffusers.DDPMScheduler(**config), 9),
        "sigmoid",
    )


@pytest.mark.parametrize("custom", [[150, 120, 60, 59, 3, 0], [199, 100, 1]])
def test_ddpm_custom_timesteps_match_diffusers(custom):
    config = dict(num_train_timesteps=200)
    compare(
        run_loop(fastddpm.DDPMScheduler(**config), None, custom=custom),
        run_loop(diffusers.DDPMScheduler(**config), None, custom=custom),
        f"custom {custom}",
    )


def test_ddpm_without_set_timesteps_steps_back_by_one_like_diffusers():
    config = dict(num_train_timesteps=50)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    for t in (49, 17, 1, 0):
        a = fastddpm.DDPMScheduler(**config).step(
            dummy_model(x, t, False), t, x, generator=torch.manual_seed(5)
        )
        b = diffusers.DDPMScheduler(**config).step(
            dummy_model(x, t, False), t, x, generator=torch.manual_seed(5)
        )
        assert_close(a.prev_sample, b.prev_sample, TOL, TOL, f"t={t}")


def test_fixed_large_log_is_the_log_form_of_fixed_large_where_diffusers_gives_nan():
    config = dict(num_train_timesteps=100)
    ours = run_loop(fastddpm.DDPMScheduler(variance_type="fixed_large_log", **config), 5)
    large = run_loop(fastddpm.DDPMScheduler(variance_type="fixed_large", **config), 5)
    # Two formulas for one variance, exp(log(beta) / 2) and sqrt(beta): equal here (AMD EPYC, AVX2), 2.4e-7
    # apart on an Intel Xeon with AVX-512 (torch's vectorised exp / log); the bound is about 8x that.
    compare(ours, large, "fixed_large_log vs fixed_large", tol=2e-6)
    theirs = run_loop(diffusers.DDPMScheduler(variance_type="fixed_large_log", **config), 5)
    assert torch.isnan(theirs[0][1]).all(), "diffusers 0.42 takes sqrt(log(beta)): if this changed, revisit"


DDIM_ETAS = [0.0, 0.3, 1.0]


@pytest.mark.parametrize(
    "eta,prediction_type,clip,use_clipped",
    list(itertools.product(DDIM_ETAS, PREDICTIONS, CLIPS, [False, True])),
)
def test_ddim_matches_diffusers_eta_prediction_clip(eta, prediction_type, clip, use_clipped):
    config = dict(num_train_timesteps=200, prediction_type=prediction_type, **clip)
    kwargs = {"eta": eta, "use_clipped_model_output": use_clipped}
    compare(
        run_loop(fastddpm.DDIMScheduler(**config), 9, step_kwargs=kwargs),
        run_loop(diffusers.DDIMScheduler(**config), 9, step_kwargs=kwargs),
        f"ddim {config} {kwargs}",
    )


@pytest.mark.parametrize("spacing,schedule", list(itertools.product(SPACINGS, SCHEDULES)))
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_matches_diffusers_spacing_schedule(spacing, schedule, set_alpha_to_one):
    config = dict(num_train_timesteps=200, set_alpha_to_one=set_alpha_to_one, **spacing, **schedule)
    kwargs = {"eta": 0.5}
    compare(
        run_loop(fastddpm.DDIMScheduler(**config), 11, step_kwargs=kwargs),
        run_loop(diffusers.DDIMScheduler(**config), 11, step_kwargs=kwargs),
        f"ddim {config}",
    )


def test_ddim_variance_noise_and_generator_lists_match_diffusers():
    ours, theirs = fastddpm.DDIMScheduler(), diffusers.DDIMScheduler()
    ours.set_timesteps(5)
    theirs.set_timesteps(5)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    t = ours.timesteps[1]
    a = ours.step(dummy_model(x, int(t), False), t, x, eta=0.7, variance_noise=noise)
    b = theirs.step(dummy_model(x, int(t), False), t, x, eta=0.7, variance_noise=noise)
    assert_close(a.prev_sample, b.prev_sample, TOL, TOL, "variance_noise")
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(SHAPE[0])]  # noqa: E731
    a = ours.step(dummy_model(x, int(t), False), t, x, eta=0.7, generator=gens())
    b = theirs.step(dummy_model(x, int(t), False), t, x, eta=0.7, generator=gens())
    assert_close(a.prev_sample, b.prev_sample, TOL, TOL, "generator list")
    with pytest.raises(ValueError, match="either generator or variance_noise"):
        ours.step(x, t, x, eta=0.7, variance_noise=noise, generator=torch.manual_seed(0))


@pytest.mark.parametrize("cls", ["DDPMScheduler", "DDIMScheduler"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_add_noise_per_sample_timesteps_matches_diffusers(cls, dtype):
    ours, theirs = (
        getattr(fastddpm, cls)(beta_schedule="squaredcos_cap_v2"),
        getattr(diffusers, cls)(beta_schedule="squaredcos_cap_v2"),
    )
    x0 = torch.randn(SHAPE).to(dtype)
    eps = torch.randn(SHAPE).to(dtype)
    t = torch.tensor([0, 517, 999])
    assert_close(ours.add_noise(x0, eps, t), theirs.add_noise(x0, eps, t), 0, 0, f"add_noise {dtype}")
    assert_close(ours.get_velocity(x0, eps, t), theirs.get_velocity(x0, eps, t), 0, 0, "velocity")


def test_from_config_takes_diffusers_configs_and_ignores_unused_keys():
    ddpm_config = diffusers.DDPMScheduler(variance_type="fixed_large", num_train_timesteps=321).config
    ddim = fastddpm.DDIMScheduler.from_config(ddpm_config)  # variance_type is DDPM-only: ignored
    assert ddim.config.num_train_timesteps == 321
    ddpm = fastddpm.DDPMScheduler.from_config(dict(ddpm_config), clip_sample=False)
    assert ddpm.config.variance_type == "fixed_large" and ddpm.config.clip_sample is False
    assert fastddpm.DDPMScheduler.from_config(ddpm).config == ddpm.config
    legacy_config = {"predict_epsilon": False, "tensor_format": "pt", "_class_name": "DDPMScheduler"}
    legacy = fastddpm.DDPMScheduler.from_config(legacy_config)
    assert legacy.config.prediction_type == "sample"
    assert fastddpm.DDPMScheduler(predict_epsilon=False).config.prediction_type == "sample"


@pytest.mark.parametrize(
    "config,message",
    [
        ({"beta_schedule": "quadratic"}, "beta_schedule"),
        ({"prediction_type": "flow"}, "prediction_type"),
        ({"timestep_spacing": "even"}, "timestep_spacing"),
    ],
)
def test_unsupported_config_raises_naming_the_field(config, message):
    with pytest.raises(ValueError, match=message):
        fastddpm.DDPMScheduler(**config)


def test_unknown_variance_type_raises_when_a_step_needs_it():
    scheduler = fastddpm.DDPMScheduler(variance_type="huge")  # diffusers builds it too, and fails on use
    x = torch.zeros(1, 1, 2, 2)
    scheduler.step(x, 0, x)  # t = 0 draws no noise: no variance needed
    with pytest.raises(ValueError, match="variance_type"):
        scheduler.step(x, 5, x)


def test_a_field_of_another_scheduler_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="use_karras_sigmas"):
        fastddpm.DDPMScheduler(use_karras_sigmas=True)


def test_bad_timesteps_raise():
    scheduler = fastddpm.DDPMScheduler(num_train_timesteps=10)
    with pytest.raises(ValueError, match="between 1 and"):
        scheduler.set_timesteps(11)
    with pytest.raises(ValueError, match="descending"):
        scheduler.set_timesteps(timesteps=[3, 5])
    with pytest.raises(ValueError, match="only one"):
        scheduler.set_timesteps(3, timesteps=[2, 1])
    with pytest.raises(ValueError, match="set_timesteps"):
        fastddpm.DDIMScheduler().step(torch.zeros(1, 1, 2, 2), 10, torch.zeros(1, 1, 2, 2))


def test_step_table_rows_equal_the_rows_step_uses():
    scheduler = fastddpm.DDIMScheduler(num_train_timesteps=100)
    scheduler.set_timesteps(6)
    table = scheduler.step_table(eta=0.4)
    assert table.shape == (6, 8) and table.dtype == torch.float32
    for i, t in enumerate(scheduler.timesteps.tolist()):
        assert torch.equal(table[i], scheduler._row(t, eta=0.4))
