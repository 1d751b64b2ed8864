"""DPMSolverSDEScheduler against diffusers 0.42.1: full loops with the same Brownian tree (the same
noise_sampler_seed, or the same global RNG where it is None), the schedule before and after set_timesteps,
add_noise, the two-call state, the Philox bridge's law and the API."""

import pytest
import torch

from fastddpm.schedulers import DPMSolverSDEScheduler
from fastddpm.schedulers.brownian_noise import BrownianTreeNoise, bridge_weights
from tests.schedulers.sampler_parity import ids, max_diff, run

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("torchsde")

TOL = 0.0  # both sides do the same float32 operations and query the same tree; measured 0.0 for every config

CONFIGS = [
    {"noise_sampler_seed": 3},
    {"noise_sampler_seed": 4, "timestep_spacing": "leading", "steps_offset": 1},
    {"noise_sampler_seed": 5, "timestep_spacing": "trailing"},
    {"noise_sampler_seed": 6, "prediction_type": "v_prediction"},
    {"noise_sampler_seed": 7, "beta_schedule": "scaled_linear"},
    {"noise_sampler_seed": 8, "beta_schedule": "squaredcos_cap_v2"},
    {"noise_sampler_seed": 9, "trained_betas": torch.linspace(1e-4, 0.02, 1000).tolist()},
    {"noise_sampler_seed": 10, "use_karras_sigmas": True},  # float64 fractional timesteps, not rounded
    {"noise_sampler_seed": 11, "use_exponential_sigmas": True},
    {"noise_sampler_seed": 12, "use_beta_sigmas": True},
    {"noise_sampler_seed": 13, "use_karras_sigmas": True, "prediction_type": "v_prediction",
     "timestep_spacing": "trailing"},
]  # fmt: skip


@pytest.mark.parametrize("config", CONFIGS, ids=ids)
@pytest.mark.parametrize("steps", [1, 2, 7, 20])
def test_matches_diffusers_with_the_same_noise_sampler_seed(config, steps):
    assert max_diff("DPMSolverSDEScheduler", config, steps) <= TOL


def test_without_a_seed_the_tree_seed_comes_from_the_global_rng_as_in_diffusers():
    traces, after = [], []
    for cls in (DPMSolverSDEScheduler, diffusers.DPMSolverSDEScheduler):
        torch.manual_seed(123)
        traces.append(run(cls(), 5))
        after.append(torch.randint(0, 2**62, []).item())  # the global RNG was drawn as often
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(*traces, strict=True))
    assert after[0] == after[1]
    torch.manual_seed(124)
    other = run(DPMSolverSDEScheduler(), 5)
    assert not torch.equal(other[-1][1], traces[0][-1][1])  # the seed matters: the test could fail


def test_one_seed_per_sample_gives_one_tree_per_sample_as_in_diffusers():
    assert max_diff("DPMSolverSDEScheduler", {"noise_sampler_seed": [1, 2, 3]}, 4) <= TOL
    with pytest.raises(ValueError, match="noise_sampler_seed has 2 seeds for a batch of 3"):
        run(DPMSolverSDEScheduler(noise_sampler_seed=[1, 2]), 2)


def _pair(**config):
    return DPMSolverSDEScheduler(**config), diffusers.DPMSolverSDEScheduler(**config)


def _assert_same_schedule(a, b):
    for name in ("timesteps", "sigmas"):
        assert getattr(a, name).dtype == getattr(b, name).dtype, name
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.num_inference_steps == b.num_inference_steps
    assert torch.equal(torch.as_tensor(a.init_noise_sigma), torch.as_tensor(b.init_noise_sigma))


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"use_karras_sigmas": True},
        {"timestep_spacing": "leading"},
        {"beta_schedule": "squaredcos_cap_v2"},
    ],
    ids=ids,
)
def test_schedule_attributes_match_before_and_after_set_timesteps(config):
    a, b = _pair(**config)
    _assert_same_schedule(a, b)  # the constructor's every-training-step schedule
    assert a.order == b.order == 2 and len(a) == len(b)
    for steps in (2, 7, 12):
        a.set_timesteps(steps)
        b.set_timesteps(steps)
        _assert_same_schedule(a, b)
    a.set_timesteps(4, num_train_timesteps=500)
    b.set_timesteps(4, num_train_timesteps=500)
    _assert_same_schedule(a, b)


def test_config_defaults_match_diffusers():
    a, b = _pair()
    assert {k: v for k, v in a.config.items() if not k.startswith("_")} == {
        k: v for k, v in b.config.items() if not k.startswith("_")
    }


def test_steps_without_set_timesteps_match_diffusers():
    """diffusers' constructor sets the every-training-step schedule; a loop over it without set_timesteps."""
    outs = []
    for scheduler in _pair(noise_sampler_seed=2):
        x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * scheduler.init_noise_sigma
        for t in scheduler.timesteps[:5]:
            x = scheduler.step(torch.tanh(scheduler.scale_model_input(x, t)), t, x).prev_sample
        outs.append((x, scheduler.state_in_first_order, scheduler.step_index))
    assert torch.equal(outs[0][0], outs[1][0]) and outs[0][1:] == outs[1][1:]


def test_state_alternates_and_set_timesteps_resets_it():
    a, b = _pair(noise_sampler_seed=0)
    for scheduler in (a, b):
        scheduler.set_timesteps(3)
    x = torch.ones(1, 1, 2, 2)
    states = []
    for t in a.timesteps:
        states.append((a.state_in_first_order, b.state_in_first_order))
        for scheduler in (a, b):
            scheduler.step(x * 0.1, t, x, return_dict=False)
    assert states == [(True, True), (False, False)] * 2 + [(True, True)]
    assert a.noise_sampler is not None
    a.set_timesteps(3)
    assert a.state_in_first_order and a.step_index is None and a.noise_sampler is None


@pytest.mark.parametrize("begin", [None, 3])
def test_add_noise_matches_diffusers(begin):
    a, b = _pair(use_karras_sigmas=True)
    x0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    for scheduler in (a, b):
        scheduler.set_timesteps(6)
        if begin is not None:
            scheduler.set_begin_index(begin)
    timesteps = a.timesteps[[0, 3, 6]]
    assert torch.equal(a.add_noise(x0, noise, timesteps), b.add_noise(x0, noise, timesteps))


def test_the_philox_bridge_has_the_trees_law():
    """The second call's noise is w1 z1 + w2 z2 (z1 the first call's): its correlation with the first call's
    noise is w1 = sqrt(a / (a + b)), which a torchsde tree's two increments show over 200,000 entries
    (standard error about 1e-3; measured |difference| 4.8e-4, std 0.9975, for this seed)."""
    sigma, sigma_mid, sigma_next = 3.0, 1.2, 0.4
    tree = BrownianTreeNoise(torch.zeros(200_000), 0.1, 5.0, seed=17)
    first = tree(torch.tensor(sigma), torch.tensor(sigma_mid))
    second = tree(torch.tensor(sigma), torch.tensor(sigma_next))
    correlation = float(torch.corrcoef(torch.stack([first, second]))[0, 1])
    w1, w2 = bridge_weights(sigma, sigma_mid, sigma_next)
    assert w1**2 + w2**2 == pytest.approx(1.0)
    assert abs(correlation - w1) < 0.01, (correlation, w1)
    assert abs(float(second.std()) - 1.0) < 0.01


def test_variance_noise_bridges_the_calls_and_builds_no_tree():
    scheduler = DPMSolverSDEScheduler()
    scheduler.set_timesteps(2)
    shape = (2, 3, 4, 4)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    z1, z2 = (torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    out = torch.zeros(shape)  # epsilon 0: x0_hat is the call's input
    t0, t1 = scheduler.timesteps[:2]
    x_mid = scheduler.step(out, t0, x, variance_noise=z1).prev_sample
    x_next = scheduler.step(out, t1, x_mid, variance_noise=z2).prev_sample
    assert scheduler.noise_sampler is None
    terms = scheduler._terms(1, first=False)
    w1, w2 = bridge_weights(float(terms.sigma), float(terms.sigma_input), float(terms.sigma_next))
    # the second call starts again from x, toward x0_hat = x_mid, with the bridged noise
    expected = terms.scale_x * x + terms.x0_weight * x_mid + (w1 * z1 + w2 * z2) * terms.sigma_up
    assert torch.allclose(x_next, expected, rtol=1e-6, atol=1e-6)


def test_plans_per_noise_source():
    scheduler = DPMSolverSDEScheduler()
    torch_plan = scheduler.sampling_plan(4)
    philox_plan = scheduler.sampling_plan(4, noise="philox")
    assert torch_plan.host_noise is not None and philox_plan.host_noise is None
    # every call draws: the last call's draw is zeros (and builds the tree in a one-step plan, as step does)
    assert torch_plan.noise_draws == (True,) * 7
    assert torch_plan.update.takes_noise and torch_plan.update.state_slots == 2
    assert [q is None for q in scheduler.tree_queries()] == [False] * 6 + [True]
    assert not torch.equal(torch_plan.table, philox_plan.table)  # the second calls' noise columns differ
    with pytest.raises(ValueError, match="noise 'cuda' is not one of torch, philox"):
        scheduler.sampling_plan(4, noise="cuda")


@pytest.mark.parametrize(
    "config,field",
    [
        ({"prediction_type": "sample"}, "prediction_type"),  # diffusers raises NotImplementedError in step
        ({"timestep_spacing": "even"}, "timestep_spacing"),
        ({"beta_schedule": "sigmoid"}, "beta_schedule"),  # not one of diffusers' three for this class
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, "use_karras_sigmas"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(config, field):
    with pytest.raises(ValueError, match=field):
        DPMSolverSDEScheduler(**config)


def test_set_timesteps_takes_no_custom_timesteps():
    with pytest.raises(ValueError, match="timesteps"):
        DPMSolverSDEScheduler().set_timesteps(timesteps=[999, 500, 0])
