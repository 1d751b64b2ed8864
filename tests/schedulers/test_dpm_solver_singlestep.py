"""DPMSolverSinglestepScheduler against diffusers 0.42.1: full loops over its config matrix (the SDE variant
with a shared generator), the per-step orders and the config change set_timesteps makes, a schedule entered
late, the schedule, add_noise and the API."""

import itertools
import logging

import pytest
import torch

from fastddpm.schedulers import DPMSolverSinglestepScheduler
from tests.schedulers.sampler_parity import SHAPE, dummy_model, ids, max_diff

diffusers = pytest.importorskip("diffusers")

TOL = 0.0  # both sides do the same float32 operations in the same order; measured 0.0 for every config below

CONFIGS = [
    {"algorithm_type": a, "solver_order": o, "solver_type": s}
    for a, o, s in itertools.product(["dpmsolver++", "sde-dpmsolver++"], [1, 2, 3], ["midpoint", "heun"])
]
CONFIGS += [
    {"algorithm_type": "dpmsolver", "solver_order": o, "solver_type": s, "final_sigmas_type": "sigma_min"}
    for o, s in itertools.product([1, 2, 3], ["midpoint", "heun"])
]
CONFIGS += [
    {"use_karras_sigmas": True},
    {"use_karras_sigmas": True, "solver_order": 3, "beta_schedule": "scaled_linear"},
    {"use_exponential_sigmas": True, "solver_order": 3, "algorithm_type": "sde-dpmsolver++"},
    {"use_beta_sigmas": True},
    {"final_sigmas_type": "sigma_min", "lower_order_final": False},
    {"final_sigmas_type": "sigma_min", "lower_order_final": True, "solver_order": 3},
    {"prediction_type": "v_prediction"},
    {"prediction_type": "sample", "solver_order": 3},
    {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
    {"lambda_min_clipped": -5.1, "beta_schedule": "squaredcos_cap_v2"},
    # diffusers maps these to dpmsolver++ / midpoint (and refuses deis with a final sigma of 0)
    {"algorithm_type": "deis", "solver_type": "bh2", "final_sigmas_type": "sigma_min"},
]


@pytest.fixture(autouse=True)
def _quiet_diffusers():
    """diffusers logs a warning each time set_timesteps turns lower_order_final on."""
    logger = logging.getLogger("diffusers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.mark.parametrize("config", CONFIGS, ids=ids)
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 20])
def test_matches_diffusers(config, steps):
    assert max_diff("DPMSolverSinglestepScheduler", config, steps) <= TOL


def _pair(**config):
    return DPMSolverSinglestepScheduler(**config), diffusers.DPMSolverSinglestepScheduler(**config)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("lower_order_final", [False, True])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_order_list_and_config_after_set_timesteps_match_diffusers(order, lower_order_final, final):
    a, b = _pair(solver_order=order, lower_order_final=lower_order_final, final_sigmas_type=final)
    assert a.order_list == b.order_list  # the constructor's, over every training step
    for steps in range(1, 14):
        try:
            assert a.get_order_list(steps) == b.get_order_list(steps)
        except IndexError:  # diffusers' list is empty (fewer steps than one group) and has no last entry
            assert a.get_order_list(steps) == [] and steps < order
        a.set_timesteps(steps)
        b.set_timesteps(steps)
        assert a.order_list == b.order_list and len(a.order_list) == steps
        assert a.config.lower_order_final == b.config.lower_order_final  # turned on as diffusers does


def test_schedule_and_defaults_match_diffusers():
    for config in (
        {},
        {"use_karras_sigmas": True},
        {"use_exponential_sigmas": True},
        {"lambda_min_clipped": -3.0},
    ):
        a, b = _pair(**config)
        assert torch.equal(a.timesteps, b.timesteps) and torch.equal(a.sigmas, b.sigmas)
        for steps in (5, 12):
            a.set_timesteps(steps)
            b.set_timesteps(steps)
            for name in ("timesteps", "sigmas"):
                ours, theirs = getattr(a, name), getattr(b, name)
                assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), (config, name)
            assert a.num_inference_steps == b.num_inference_steps and a.init_noise_sigma == b.init_noise_sigma
    a, b = _pair()
    assert {k: v for k, v in a.config.items() if not k.startswith("_")} == {
        k: v for k, v in b.config.items() if not k.startswith("_")
    }
    assert a.order == b.order == 1 and len(a) == len(b)


@pytest.mark.parametrize("config", [{"solver_order": 3}, {"algorithm_type": "sde-dpmsolver++"}], ids=ids)
@pytest.mark.parametrize("begin", [1, 4])
def test_a_schedule_entered_late_matches_diffusers(config, begin):
    """set_begin_index mid-group: the history is shorter than the order list asks, so the order drops."""
    outs = []
    for scheduler in _pair(**config):
        scheduler.set_timesteps(9)
        scheduler.set_begin_index(begin)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(SHAPE, generator=generator)
        for t in scheduler.timesteps[begin:]:
            x = scheduler.step(dummy_model(x, t), t, x, generator=generator).prev_sample
        outs.append(x)
    assert torch.equal(*outs)


def test_custom_timesteps_match_diffusers():
    outs = []
    for scheduler in _pair(solver_order=3):
        scheduler.set_timesteps(timesteps=[999, 800, 620, 400, 300, 100, 10])
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        for t in scheduler.timesteps:
            x = scheduler.step(dummy_model(x, t), t, x).prev_sample
        outs.append((x, scheduler.timesteps, scheduler.order_list))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert outs[0][2] == outs[1][2]


@pytest.mark.parametrize("begin", [None, 3])
def test_add_noise_matches_diffusers(begin):
    a, b = _pair(use_karras_sigmas=True)
    x0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    for scheduler in (a, b):
        scheduler.set_timesteps(6)
        if begin is not None:
            scheduler.set_begin_index(begin)
    timesteps = a.timesteps[[0, 3, 5]]
    assert torch.equal(a.add_noise(x0, noise, timesteps), b.add_noise(x0, noise, timesteps))


def test_sde_variance_noise_replaces_the_generator_draw():
    """The eager loop's Philox noise goes in as variance_noise; with the generator's own draw it is diffusers'."""
    a, b = _pair(algorithm_type="sde-dpmsolver++", solver_order=3)
    outs = []
    for scheduler, by_variance in ((a, True), (b, False)):
        scheduler.set_timesteps(7)
        generator = torch.Generator().manual_seed(9)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        for t in scheduler.timesteps:
            out = dummy_model(x, t)
            if by_variance:
                x = scheduler.step(
                    out, t, x, variance_noise=torch.randn(SHAPE, generator=generator)
                ).prev_sample
            else:
                x = scheduler.step(out, t, x, generator=generator).prev_sample
        outs.append(x)
    assert torch.equal(*outs)


def test_learned_variance_uses_the_mean_channels():
    outs = []
    for scheduler in _pair(variance_type="learned_range", solver_order=3):
        scheduler.set_timesteps(5)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        for t in scheduler.timesteps:
            x = scheduler.step(torch.cat([dummy_model(x, t), torch.ones_like(x) * 7], 1), t, x).prev_sample
        outs.append(x)
    assert outs[0].shape == SHAPE and torch.equal(*outs)


def test_plans_keep_the_group_state_and_draw_noise_as_diffusers():
    plan = DPMSolverSinglestepScheduler(solver_order=3).sampling_plan(7)
    assert plan.update.state_slots == 3 and not plan.update.takes_noise and plan.noise_draws == (False,) * 7
    plan = DPMSolverSinglestepScheduler(algorithm_type="sde-dpmsolver++").sampling_plan(5)
    assert plan.update.state_slots == 2 and plan.update.takes_noise and plan.noise_draws == (True,) * 5
    assert DPMSolverSinglestepScheduler(solver_order=1).sampling_plan(4).update.state_slots == 0


@pytest.mark.parametrize(
    "config,field",
    [
        ({"use_flow_sigmas": True}, "use_flow_sigmas"),
        ({"use_dynamic_shifting": True}, "use_dynamic_shifting"),
        ({"algorithm_type": "dpmsolver"}, "final_sigmas_type"),  # diffusers raises the same
        ({"algorithm_type": "deis"}, "final_sigmas_type"),
        ({"algorithm_type": "sde-dpmsolver"}, "algorithm_type"),  # not in diffusers' singlestep either
        (
            {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "thresholding": True},
            "thresholding",
        ),
        ({"solver_order": 4}, "solver_order"),
        ({"solver_type": "bh3"}, "solver_type"),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, "use_karras_sigmas"),
        ({"prediction_type": "flow_prediction"}, "prediction_type"),
    ],
)
def test_bad_or_unsupported_config_is_one_line_naming_the_field(config, field):
    with pytest.raises(ValueError, match=field) as error:
        DPMSolverSinglestepScheduler(**config)
    assert "\n" not in str(error.value)


def test_set_timesteps_refusals():
    scheduler = DPMSolverSinglestepScheduler()
    with pytest.raises(ValueError, match="'mu'"):
        scheduler.set_timesteps(5, mu=0.5)
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(5, timesteps=[999, 500, 0])
    with pytest.raises(ValueError, match="spacing"):
        DPMSolverSinglestepScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[999, 500, 0])
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(torch.zeros(SHAPE), 999, torch.zeros(SHAPE))
