"""KDPM2 and KDPM2 ancestral against diffusers 0.42.1: full loops over the config matrix (the ancestral one
with a shared generator), the schedule before set_timesteps, add_noise, the two-call state and the API."""

import pytest
import torch

from fastddpm.schedulers import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler
from tests.schedulers.sampler_parity import ids, max_diff

diffusers = pytest.importorskip("diffusers")

TOL = 0.0  # both sides do the same float32 operations; measured 0.0 for every config below

CONFIGS = [
    {},
    {"timestep_spacing": "leading", "steps_offset": 1},
    {"timestep_spacing": "trailing"},
    {"prediction_type": "v_prediction"},
    {"beta_schedule": "scaled_linear"},
    {"use_karras_sigmas": True},  # KDPM2 rounds Karras timesteps to integers (float64)
    {"use_exponential_sigmas": True},
    {"use_beta_sigmas": True},
    {"use_karras_sigmas": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    {"beta_schedule": "scaled_linear", "timestep_spacing": "leading", "use_exponential_sigmas": True},
]
# Plain variant only: with a large sigma_max / sigma_1 (cosine betas; betas 1e-4..0.02 at 2 steps) diffusers'
# ancestral schedule has sigma_up^2 > sigma_next^2 by rounding, so sigma_down = sqrt(negative) = NaN and a
# NaN midpoint timestep, on both sides (test_schedule_attributes_... compares them NaN-aware), which
# torch.equal in max_diff does not call equal.
PLAIN = CONFIGS + [
    {"beta_schedule": "squaredcos_cap_v2"},
    {"trained_betas": torch.linspace(1e-4, 0.02, 1000).tolist()},
]
SCHEDULERS = [KDPM2DiscreteScheduler, KDPM2AncestralDiscreteScheduler]


@pytest.mark.parametrize("config", PLAIN, ids=ids)
@pytest.mark.parametrize("steps", [1, 2, 7, 20])
def test_kdpm2_matches_diffusers(config, steps):
    assert max_diff("KDPM2DiscreteScheduler", config, steps) <= TOL


@pytest.mark.parametrize("config", CONFIGS, ids=ids)
@pytest.mark.parametrize("steps", [1, 2, 7, 20])
def test_kdpm2_ancestral_matches_diffusers_with_the_same_generator(config, steps):
    assert max_diff("KDPM2AncestralDiscreteScheduler", config, steps) <= TOL


def _pair(cls, **config):
    return cls(**config), getattr(diffusers, cls.__name__)(**config)


def _schedule(scheduler):
    names = ["timesteps", "sigmas", "sigmas_interpol", "sigmas_up", "sigmas_down"]
    return {n: getattr(scheduler, n) for n in names if hasattr(scheduler, n)}


def _assert_same_schedule(a, b):
    ours, theirs = _schedule(a), _schedule(b)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype, name
        assert torch.equal(ours[name].nan_to_num(-1.0), theirs[name].nan_to_num(-1.0)), name


@pytest.mark.parametrize("cls", SCHEDULERS)
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
def test_schedule_attributes_and_init_noise_sigma_match_before_and_after_set_timesteps(cls, config):
    a, b = _pair(cls, **config)
    _assert_same_schedule(a, b)  # the constructor's every-training-step schedule, NaN entries included
    assert torch.equal(torch.as_tensor(a.init_noise_sigma), torch.as_tensor(b.init_noise_sigma))
    assert a.order == b.order == 2 and len(a) == len(b)
    for steps in (2, 7, 12):
        a.set_timesteps(steps)
        b.set_timesteps(steps)
        _assert_same_schedule(a, b)
        assert torch.equal(torch.as_tensor(a.init_noise_sigma), torch.as_tensor(b.init_noise_sigma))
    a.set_timesteps(4, num_train_timesteps=500)
    b.set_timesteps(4, num_train_timesteps=500)
    _assert_same_schedule(a, b)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_config_defaults_match_diffusers(cls):
    a, b = _pair(cls)
    assert {k: v for k, v in a.config.items() if not k.startswith("_")} == {
        k: v for k, v in b.config.items() if not k.startswith("_")
    }


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_steps_without_set_timesteps_match_diffusers(cls):
    """diffusers' constructor sets the every-training-step schedule; a loop over it without set_timesteps."""
    outs = []
    for scheduler in _pair(cls):
        generator = torch.Generator().manual_seed(2)
        x = torch.randn(2, 3, 4, 4, generator=generator) * scheduler.init_noise_sigma
        for t in scheduler.timesteps[:5]:
            out = torch.tanh(scheduler.scale_model_input(x, t))
            kwargs = {"generator": generator} if cls is KDPM2AncestralDiscreteScheduler else {}
            x = scheduler.step(out, t, x, **kwargs).prev_sample
        outs.append((x, scheduler.state_in_first_order, scheduler.step_index))
    assert torch.equal(outs[0][0], outs[1][0]) and outs[0][1:] == outs[1][1:]


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_state_alternates_and_set_timesteps_resets_it(cls):
    a, b = _pair(cls)
    for scheduler in (a, b):
        scheduler.set_timesteps(3)
    x = torch.ones(1, 1, 2, 2)
    states = []
    for t in a.timesteps:
        states.append((a.state_in_first_order, b.state_in_first_order))
        for scheduler in (a, b):
            scheduler.step(x * 0.1, t, x, return_dict=False)
    assert states == [(True, True), (False, False)] * 2 + [(True, True)]
    assert not a.state_in_first_order  # the last call is a first-order one, as in diffusers
    a.set_timesteps(3)
    assert a.state_in_first_order and a.step_index is None


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("begin", [None, 3])
def test_add_noise_matches_diffusers(cls, begin):
    a, b = _pair(cls, use_karras_sigmas=True)
    x0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    for scheduler in (a, b):
        scheduler.set_timesteps(6)
        if begin is not None:
            scheduler.set_begin_index(begin)
    timesteps = a.timesteps[[0, 3, 6]]
    assert torch.equal(a.add_noise(x0, noise, timesteps), b.add_noise(x0, noise, timesteps))


def test_ancestral_variance_noise_replaces_the_generator_draw():
    """The eager loop's Philox noise goes in as variance_noise; with the generator's own draw it is diffusers'."""
    a, b = _pair(KDPM2AncestralDiscreteScheduler)
    shape = (2, 3, 4, 4)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * a.init_noise_sigma
    outs = []
    for scheduler, by_variance in ((a, True), (b, False)):
        scheduler.set_timesteps(4)
        generator, y = torch.Generator().manual_seed(9), x
        for t in scheduler.timesteps:
            out = torch.sin(scheduler.scale_model_input(y, t))
            if by_variance and not scheduler.state_in_first_order:
                y = scheduler.step(
                    out, t, y, variance_noise=torch.randn(shape, generator=generator)
                ).prev_sample
            elif by_variance:
                y = scheduler.step(out, t, y).prev_sample  # a first call uses no noise
            else:
                y = scheduler.step(out, t, y, generator=generator).prev_sample
        outs.append(y)
    assert torch.equal(outs[0], outs[1])


def test_ancestral_plan_draws_before_second_calls_only():
    scheduler = KDPM2AncestralDiscreteScheduler()
    plan = scheduler.sampling_plan(4)
    assert plan.noise_draws == (False, True) * 3 + (False,)
    assert plan.update.takes_noise and plan.update.state_slots == 1
    assert KDPM2DiscreteScheduler().sampling_plan(4).noise_draws == (False,) * 7


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize(
    "config,field",
    [
        ({"prediction_type": "sample"}, "prediction_type"),  # diffusers raises NotImplementedError in step
        ({"timestep_spacing": "even"}, "timestep_spacing"),
        ({"beta_schedule": "exp"}, "beta_schedule"),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, "use_karras_sigmas"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(cls, config, field):
    with pytest.raises(ValueError, match=field):
        cls(**config)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_set_timesteps_takes_no_custom_timesteps(cls):
    with pytest.raises(ValueError, match="timesteps"):
        cls().set_timesteps(timesteps=[999, 500, 0])
