"""dpm-sde's plans in the sampling loop against its scheduler's own step in the eager loop, for both noise
sources: noise="torch" with the Brownian tree (the plan's host draws vs step's own tree, the same seed),
noise="philox" with the bridge rows (the fused update's Philox normals vs the eager loop's variance_noise of
the same streams). tests/engine/test_linear_tables.py's generic harness feeds generator normals, which this
sampler does not draw, hence this file.

Measured max |table - scheduler| / (1 + max |x|) over the cases below: 2.8e-6 (torch, 10 steps, plain),
the others 0 .. 1.7e-6; bound 2e-5 as for the other table-driven samplers (test_linear_tables.TOL).
"""

import pytest
import torch

from fastddpm.engine.conditioned_network import ConditionedNetwork
from fastddpm.engine.eager_loop import run_eager_loop
from fastddpm.engine.noise_source import NoiseSource
from fastddpm.engine.sampling_loop import SamplingLoop
from fastddpm.schedulers import DPMSolverSDEScheduler
from tests.engine.test_linear_tables import SHAPE, TOL, DummyNet

pytest.importorskip("torchsde")

CONFIGS = [
    {},
    {"prediction_type": "v_prediction"},
    {"use_karras_sigmas": True, "beta_schedule": "scaled_linear"},
    {"use_exponential_sigmas": True, "timestep_spacing": "trailing"},
    {"timestep_spacing": "leading", "steps_offset": 1, "beta_schedule": "squaredcos_cap_v2"},
]
CPU = torch.device("cpu")


def _relative(got, expected) -> float:
    return float((got - expected).abs().max() / (1 + expected.abs().max()))


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("steps", [1, 2, 7, 10])
def test_torch_plan_matches_the_scheduler_loop_with_the_same_tree(config, steps):
    net = DummyNet()
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    scheduler = DPMSolverSDEScheduler(noise_sampler_seed=5, **config)
    scheduler.set_timesteps(steps)
    expected = run_eager_loop(net, scheduler, x_T, NoiseSource("torch", None))
    plan = scheduler.sampling_plan(steps)
    loop = SamplingLoop(ConditionedNetwork(net, torch.float32, SHAPE[1]), plan, SHAPE, CPU)
    got = loop.run(x_T * plan.init_noise_sigma, 0, plan.noise_draws, plan.host_noise(SHAPE, CPU))
    assert _relative(got, expected) <= TOL


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("steps", [1, 2, 7, 10])
def test_philox_plan_matches_the_scheduler_loop_with_the_same_streams(config, steps):
    net = DummyNet()
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    source = NoiseSource("philox", None, 7)
    scheduler = DPMSolverSDEScheduler(**config)
    scheduler.set_timesteps(steps)
    expected = run_eager_loop(net, scheduler, x_T, source, sample_offset=3)
    assert scheduler.noise_sampler is None  # no tree in Philox mode
    plan = scheduler.sampling_plan(steps, noise="philox")
    network = ConditionedNetwork(net, torch.float32, SHAPE[1])
    loop = SamplingLoop(network, plan, SHAPE, CPU, noise=source)
    got = loop.run(x_T * plan.init_noise_sigma, 3, plan.noise_draws, None)
    assert _relative(got, expected) <= TOL


def test_the_seed_and_the_bridge_change_the_images():
    """The comparisons above can fail: another tree seed, or the torch rows fed Philox noise, differ."""
    net, x_T = DummyNet(), torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))

    def torch_run(seed):
        plan = DPMSolverSDEScheduler(noise_sampler_seed=seed).sampling_plan(5)
        loop = SamplingLoop(ConditionedNetwork(net, torch.float32, SHAPE[1]), plan, SHAPE, CPU)
        return loop.run(x_T * plan.init_noise_sigma, 0, plan.noise_draws, plan.host_noise(SHAPE, CPU))

    assert _relative(torch_run(1), torch_run(2)) > 1e-3
    source = NoiseSource("philox", None, 7)
    scheduler = DPMSolverSDEScheduler()
    runs = []
    for table in (scheduler.sampling_plan(5, noise="philox").table, scheduler.sampling_plan(5).table):
        plan = scheduler.sampling_plan(5, noise="philox")
        plan = type(plan)(
            plan.name, plan.timesteps, table, plan.update, plan.noise_draws, plan.init_noise_sigma
        )
        loop = SamplingLoop(ConditionedNetwork(net, torch.float32, SHAPE[1]), plan, SHAPE, CPU, noise=source)
        runs.append(loop.run(x_T * plan.init_noise_sigma, 0, plan.noise_draws, None))
    assert _relative(*runs) > 1e-3
