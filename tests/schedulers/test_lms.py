"""LMSDiscreteScheduler against diffusers 0.42.1: the linear-multistep coefficients (exact Gauss-Legendre
integrals here, scipy.integrate.quad on a float32 integrand there), full loops over the config matrix, the
same loops bit for bit once diffusers is given these coefficients, the schedule, add_noise and the API."""

import numpy as np
import pytest
import torch

from fastddpm.schedulers import LMSDiscreteScheduler
from fastddpm.schedulers.lms import lms_coefficient
from tests.schedulers.sampler_parity import SHAPE, dummy_model, ids, run

diffusers = pytest.importorskip("diffusers")

# max |ours - diffusers| / (1 + max |x|) over every step of every loop below: measured 9.6e-7 (use_beta_sigmas,
# 20 steps), from the coefficients alone (test_..._bit_for_bit_with_the_same_coefficients)
LOOP_TOL = 5e-6
# |ours - diffusers'| / |diffusers'| per coefficient: measured 9.5e-7 (diffusers' integrand is float32)
COEFFICIENT_TOL = 5e-6
# ours against scipy's quad of the same polynomial in float64: measured 8.2e-15 relative to max(1, |c|)
EXACT_TOL = 1e-12

CONFIGS = [
    {},
    {"timestep_spacing": "leading", "steps_offset": 1},
    {"timestep_spacing": "trailing"},
    {"prediction_type": "v_prediction"},
    {"prediction_type": "sample"},
    {"beta_schedule": "scaled_linear"},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"use_karras_sigmas": True},
    {"use_exponential_sigmas": True, "prediction_type": "sample"},
    {"use_beta_sigmas": True},
    {"use_karras_sigmas": True, "prediction_type": "v_prediction", "timestep_spacing": "leading"},
    {"trained_betas": torch.linspace(1e-4, 0.02, 1000).tolist()},
]
COEFFICIENT_CONFIGS = [
    {},
    {"use_karras_sigmas": True},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"use_beta_sigmas": True},
    {"use_exponential_sigmas": True},
]


def _schedules(config):
    for steps in (2, 3, 7, 20, 50):
        ours, theirs = LMSDiscreteScheduler(**config), diffusers.LMSDiscreteScheduler(**config)
        ours.set_timesteps(steps)
        theirs.set_timesteps(steps)
        yield ours, theirs, steps


@pytest.mark.parametrize("config", COEFFICIENT_CONFIGS, ids=ids)
def test_coefficients_are_the_exact_integrals_of_the_lagrange_basis(config):
    integrate = pytest.importorskip("scipy.integrate")
    worst = 0.0
    for ours, _, steps in _schedules(config):
        s = ours.sigmas.numpy().astype(np.float64)
        for i in range(steps):
            order = min(i + 1, 4)
            for j in range(order):
                nodes = [s[i - k] for k in range(order) if k != j]
                basis = lambda tau: np.prod([(tau - n) / (s[i - j] - n) for n in nodes])  # noqa: B023, E731
                exact = integrate.quad(basis, s[i], s[i + 1], epsrel=1e-13, epsabs=0)[0]
                got = lms_coefficient(ours.sigmas.numpy(), i, order, j)
                worst = max(worst, abs(got - exact) / max(1.0, abs(exact)))
    assert worst <= EXACT_TOL, worst


@pytest.mark.parametrize("config", COEFFICIENT_CONFIGS, ids=ids)
def test_coefficients_match_diffusers_quad(config):
    worst = 0.0
    for ours, theirs, steps in _schedules(config):
        for i in range(steps):
            order = min(i + 1, 4)
            for j in range(order):
                expected = theirs.get_lms_coefficient(order, i, j)
                got = ours.get_lms_coefficient(order, i, j)
                worst = max(worst, abs(got - expected) / abs(expected))
    assert worst <= COEFFICIENT_TOL, worst


@pytest.mark.parametrize("config", CONFIGS, ids=ids)
@pytest.mark.parametrize("steps", [1, 2, 7, 20])
def test_loop_matches_diffusers(config, steps):
    a, b = LMSDiscreteScheduler(**config), diffusers.LMSDiscreteScheduler(**config)
    trace_a, trace_b = run(a, steps), run(b, steps)
    assert torch.equal(a.timesteps, b.timesteps) and torch.equal(a.sigmas, b.sigmas)
    errors = [
        float((xa - xb).abs().max() / (1 + xb.abs().max()))
        for (_, xa), (_, xb) in zip(trace_a, trace_b, strict=True)
    ]
    assert max(errors) <= LOOP_TOL, max(errors)
    if steps == 1:
        # Order 1 integrates 1 over [sigma, sigma_next]: scipy's quad there, one Gauss-Legendre node here, two
        # computations of sigma_next - sigma to float64 rounding, whose float32 coefficients can still be an
        # ulp apart. Measured 0.0 for every config (Intel Xeon, ATEN_CPU_CAPABILITY=default / avx2 / avx512);
        # the bound is a coefficient one ulp off plus the step's own rounding (2 ulps at 1 + max |x|).
        assert max(errors) <= 2**-22, max(errors)


def _with_our_coefficients(theirs):
    """diffusers' scheduler integrating with fastddpm's coefficients instead of quad."""
    theirs.get_lms_coefficient = lambda order, t, j: lms_coefficient(theirs.sigmas.numpy(), t, order, j)
    return theirs


@pytest.mark.parametrize(
    "config",
    [{}, {"use_karras_sigmas": True, "prediction_type": "v_prediction"}, {"prediction_type": "sample"}],
    ids=ids,
)
@pytest.mark.parametrize("order", [4, 3, 2, 1])
@pytest.mark.parametrize("begin", [None, 3])
def test_steps_are_diffusers_bit_for_bit_with_the_same_coefficients(config, order, begin):
    """Everything but the integration is diffusers' arithmetic: step's order argument (the history it keeps)
    and a schedule entered late (set_begin_index: fewer derivatives than the order asks for) included."""
    outs = []
    for scheduler in (
        LMSDiscreteScheduler(**config),
        _with_our_coefficients(diffusers.LMSDiscreteScheduler(**config)),
    ):
        scheduler.set_timesteps(9)
        if begin is not None:
            scheduler.set_begin_index(begin)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
        trace = []
        for t in scheduler.timesteps[begin or 0 :]:
            out = dummy_model(scheduler.scale_model_input(x, t), t)
            step = scheduler.step(out, t, x, order=order)
            x = step.prev_sample
            trace.append((x, step.pred_original_sample))
        outs.append(trace)
    for (xa, pa), (xb, pb) in zip(*outs, strict=True):
        assert torch.equal(xa, xb) and torch.equal(pa, pb)


def _assert_same_schedule(a, b):
    for name in ("timesteps", "sigmas"):
        ours, theirs = getattr(a, name), getattr(b, name)
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), name
    assert torch.equal(torch.as_tensor(a.init_noise_sigma), torch.as_tensor(b.init_noise_sigma))
    assert a.num_inference_steps == b.num_inference_steps


@pytest.mark.parametrize(
    "config",
    [{}, {"use_karras_sigmas": True}, {"timestep_spacing": "leading"}, {"use_exponential_sigmas": True}],
    ids=ids,
)
def test_schedule_matches_before_and_after_set_timesteps(config):
    a, b = LMSDiscreteScheduler(**config), diffusers.LMSDiscreteScheduler(**config)
    _assert_same_schedule(a, b)  # the constructor runs set_timesteps(num_train_timesteps), as diffusers'
    assert a.order == b.order == 1 and len(a) == len(b)
    for steps in (3, 12):
        a.set_timesteps(steps)
        b.set_timesteps(steps)
        _assert_same_schedule(a, b)
        assert a.derivatives == [] and a.step_index is None


def test_config_defaults_match_diffusers():
    a, b = LMSDiscreteScheduler(), diffusers.LMSDiscreteScheduler()
    assert {k: v for k, v in a.config.items() if not k.startswith("_")} == {
        k: v for k, v in b.config.items() if not k.startswith("_")
    }


@pytest.mark.parametrize("begin", [None, 2])
def test_add_noise_matches_diffusers(begin):
    a, b = (
        LMSDiscreteScheduler(use_karras_sigmas=True),
        diffusers.LMSDiscreteScheduler(use_karras_sigmas=True),
    )
    x0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    for scheduler in (a, b):
        scheduler.set_timesteps(6)
        if begin is not None:
            scheduler.set_begin_index(begin)
    timesteps = a.timesteps[[0, 3, 5]]
    assert torch.equal(a.add_noise(x0, noise, timesteps), b.add_noise(x0, noise, timesteps))


def test_plan_keeps_three_derivatives_and_scales_the_input():
    plan = LMSDiscreteScheduler().sampling_plan(6)
    assert plan.update.state_slots == 3 and plan.update.divides_input and not plan.update.takes_noise
    assert plan.noise_draws == (False,) * 6


@pytest.mark.parametrize(
    "config,field",
    [
        ({"prediction_type": "flow_prediction"}, "prediction_type"),
        ({"timestep_spacing": "even"}, "timestep_spacing"),
        ({"beta_schedule": "exp"}, "beta_schedule"),
        ({"use_karras_sigmas": True, "use_exponential_sigmas": True}, "use_karras_sigmas"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(config, field):
    with pytest.raises(ValueError, match=field) as error:
        LMSDiscreteScheduler(**config)
    assert "\n" not in str(error.value)


def test_set_timesteps_refuses_what_diffusers_lms_does_not_take():
    with pytest.raises(ValueError, match="'sigmas'"):
        LMSDiscreteScheduler().set_timesteps(4, sigmas=[3.0, 1.0, 0.0])
