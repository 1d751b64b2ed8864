"""Every table-driven sampler: its plan in the sampling loop (linear table + ops.linear_update) against the
scheduler's own ``step`` run in diffusers' standard loop (the eager loop), over each family's config matrix.

The schedulers' ``step`` equals diffusers' bit for bit (tests/schedulers; LMS's to its integrated
coefficients, 9.6e-7), so this checks the table form against diffusers' numbers. The table rounds float64
coefficients once and folds the conversion of the model output into the update, so float32 sums differ in
order: measured worst max |diff| / (1 + max |x|) over this matrix 7.6e-6 (UniPC; DPMSolverSinglestep 9.2e-6
at order 3, heun, SDE, exponential sigmas, where both float32 loops are 9e-6 .. 1.3e-5 from a float64 one;
LMS 8.4e-7; the others <= 2.0e-6; bound 2e-5). One family is looser: UniPC with predict_x0=False and
prediction_type="sample" turns x0 into eps through 1 / sigma (about 100 at the smallest sigma), and there the
float32 scheduler loop itself is 5.5e-5 off the same loop in float64, while the table is 2.0e-5 off it
(table vs scheduler 6.4e-5; bound 1e-4). SA-Solver is looser again, from the scheduler's side: diffusers' float32
weights multiply exp((1 + tau^2) lambda) (up to 1e4) into Lagrange weights that cancel, so its float32 loop is
up to 2.6e-4 off the same loop in float64 while the table (float64 weights, rounded once) is 3.7e-5 off it
(table vs scheduler 2.7e-4; bound 5e-4; tests/schedulers/test_sa_solver.py bounds the table against float64).
"""

import copy
import itertools

import pytest
import torch

import fastddpm
import fastddpm.schedulers as schedulers
from fastddpm.engine.conditioned_network import ConditionedNetwork
from fastddpm.engine.eager_loop import run_eager_loop
from fastddpm.engine.noise_source import NoiseSource
from fastddpm.engine.plan import LinearUpdate
from fastddpm.engine.sampling_loop import SamplingLoop
from fastddpm.schedulers import samplers
from tests.engine.test_sampling_loop import host_syncs_forbidden
from tests.optional_packages import skip_without_torchsde
from tests.tolerances import assert_close

SHAPE = (2, 3, 4, 5)
TOL = 2e-5
TOL_THROUGH_ONE_OVER_SIGMA = 1e-4
TOL_SA_SOLVER = 5e-4


class DummyNet(torch.nn.Module):
    """A smooth nonlinear stand-in for a U-Net: output depends on x and (fractional) t; with ``variance``
    it also returns as many more channels (a learned-variance net's layout)."""

    def __init__(self, variance: bool = False):
        super().__init__()
        self.variance = variance

    def forward(self, x, t):
        out = torch.sin(0.7 * x + t.float().reshape(-1, 1, 1, 1) / 97.0) * 1.3
        return torch.cat([out, torch.cos(x) * 9.0], 1) if self.variance else out


def half_noise_late(t) -> float:
    """An SA-Solver stochasticity other than the default: tau 0.5 above timestep 500, 1 below."""
    return 0.5 if t > 500 else 1


def _configs():
    predictions = ["epsilon", "v_prediction", "sample"]
    yield from (
        ("DPMSolverMultistepScheduler", {"algorithm_type": a, "solver_order": o, "prediction_type": p})
        for a, o, p in itertools.product(["dpmsolver++", "sde-dpmsolver++"], [1, 2, 3], predictions)
    )
    yield (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver", "solver_order": 3, "final_sigmas_type": "sigma_min"},
    )
    yield "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"}
    yield "DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "solver_type": "heun", "solver_order": 3}
    yield (
        "DPMSolverMultistepScheduler",
        {"use_lu_lambdas": True, "lower_order_final": False, "solver_order": 3},
    )
    for order, solver, x0, p in itertools.product([1, 2, 3], ["bh1", "bh2"], [True, False], predictions):
        yield "UniPCMultistepScheduler", {"solver_order": order, "solver_type": solver, "predict_x0": x0,
                                          "prediction_type": p, "final_sigmas_type": "sigma_min"}  # fmt: skip
    yield "UniPCMultistepScheduler", {"solver_order": 3}  # final sigma 0
    yield "UniPCMultistepScheduler", {"disable_corrector": [0, 2], "use_karras_sigmas": True}
    yield "UniPCMultistepScheduler", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}
    # (order 3 at the last step needs a nonzero final sigma: with 0 the Vandermonde system is singular,
    # in diffusers too)
    yield "UniPCMultistepScheduler", {"lower_order_final": False, "solver_order": 3, "timestep_spacing": "trailing",
                                      "final_sigmas_type": "sigma_min"}  # fmt: skip
    yield "UniPCMultistepScheduler", {"use_flow_sigmas": True, "flow_shift": 3.0}  # alpha = 1 - sigma
    yield "UniPCMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction",
                                      "solver_order": 3, "final_sigmas_type": "sigma_min"}  # fmt: skip
    # (predict_x0=False to a zero final sigma multiplies inf by 0: NaN, in diffusers too)
    yield "UniPCMultistepScheduler", {"use_flow_sigmas": True, "use_karras_sigmas": True, "predict_x0": False,
                                      "final_sigmas_type": "sigma_min"}  # fmt: skip
    for order, p in itertools.product([1, 2, 3], predictions):
        yield "DEISMultistepScheduler", {"solver_order": order, "prediction_type": p}
    yield "DEISMultistepScheduler", {"use_karras_sigmas": True, "lower_order_final": False}
    for p in ["epsilon", "v_prediction", "sample"]:
        yield "EulerDiscreteScheduler", {"prediction_type": p}
        yield "HeunDiscreteScheduler", {"prediction_type": p}
    for p in ["epsilon", "v_prediction"]:
        yield "EulerAncestralDiscreteScheduler", {"prediction_type": p}
    yield "EulerDiscreteScheduler", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}
    yield "EulerDiscreteScheduler", {"timestep_type": "continuous", "prediction_type": "v_prediction"}
    yield "EulerAncestralDiscreteScheduler", {"timestep_spacing": "leading", "steps_offset": 1}
    yield "HeunDiscreteScheduler", {"use_karras_sigmas": True, "beta_schedule": "scaled_linear"}
    for p in ["epsilon", "v_prediction"]:
        yield "KDPM2DiscreteScheduler", {"prediction_type": p}
        yield "KDPM2AncestralDiscreteScheduler", {"prediction_type": p}
    yield "KDPM2DiscreteScheduler", {"use_karras_sigmas": True, "beta_schedule": "scaled_linear"}
    yield "KDPM2DiscreteScheduler", {"use_exponential_sigmas": True, "timestep_spacing": "trailing"}
    yield "KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True, "timestep_spacing": "leading"}
    yield "KDPM2AncestralDiscreteScheduler", {"use_beta_sigmas": True}
    for p in predictions:
        yield "LMSDiscreteScheduler", {"prediction_type": p}
    yield "LMSDiscreteScheduler", {"use_karras_sigmas": True, "timestep_spacing": "trailing"}
    yield "LMSDiscreteScheduler", {"use_beta_sigmas": True, "beta_schedule": "scaled_linear"}
    for a, o, p in itertools.product(["dpmsolver++", "sde-dpmsolver++"], [1, 2, 3], predictions):
        yield "DPMSolverSinglestepScheduler", {"algorithm_type": a, "solver_order": o, "prediction_type": p}
    for o, s in itertools.product([2, 3], ["midpoint", "heun"]):
        yield "DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver", "solver_order": o, "solver_type": s,
                                               "final_sigmas_type": "sigma_min"}  # fmt: skip
    yield (
        "DPMSolverSinglestepScheduler",
        {"solver_order": 3, "solver_type": "heun", "use_karras_sigmas": True},
    )
    yield "DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3,
                                           "solver_type": "heun", "use_exponential_sigmas": True}  # fmt: skip
    yield "DPMSolverSinglestepScheduler", {"lower_order_final": False, "final_sigmas_type": "sigma_min"}
    for predictor, corrector, algorithm, p in [
        (2, 2, "data_prediction", "epsilon"),
        (3, 4, "data_prediction", "v_prediction"),  # 4 outputs for the corrector: 5 state slots
        (4, 1, "data_prediction", "sample"),
        (1, 3, "noise_prediction", "epsilon"),
        (3, 3, "noise_prediction", "v_prediction"),
    ]:
        yield "SASolverScheduler", {"predictor_order": predictor, "corrector_order": corrector,
                                    "algorithm_type": algorithm, "prediction_type": p}  # fmt: skip
    yield "SASolverScheduler", {"use_karras_sigmas": True, "lower_order_final": False, "predictor_order": 3}
    yield "SASolverScheduler", {"tau_func": half_noise_late, "timestep_spacing": "trailing"}
    yield "SASolverScheduler", {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}
    for skip, p, spacing in itertools.product(
        [False, True], ["epsilon", "v_prediction"], ["leading", "linspace"]
    ):
        yield "PNDMScheduler", {"skip_prk_steps": skip, "prediction_type": p, "timestep_spacing": spacing}
    yield "PNDMScheduler", {"set_alpha_to_one": True, "steps_offset": 1}


CASES = [(name, config, steps) for name, config in _configs() for steps in (7, 10)]


def _id(case):
    name, config, steps = case
    values = {
        k: getattr(v, "__name__", v) for k, v in config.items()
    }  # a function by its name, not its address
    return f"{name.replace('Scheduler', '')}-{steps}-" + ",".join(f"{k}={v}" for k, v in values.items())


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_table_loop_matches_the_scheduler_loop(case):
    name, config, steps = case
    if config.get("use_beta_sigmas"):  # scipy's Beta quantiles, as diffusers'; the GPU image has no scipy
        pytest.importorskip("scipy.stats")
    scheduler = getattr(schedulers, name)(**config)
    scheduler.set_timesteps(steps)
    assert scheduler.graph_refusal() is None
    net = DummyNet(variance=scheduler.config.get("variance_type") in ("learned", "learned_range"))
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    expected = run_eager_loop(net, scheduler, x_T, NoiseSource("torch", torch.Generator().manual_seed(1)))

    plan = scheduler.sampling_plan(steps)
    network = ConditionedNetwork(net, torch.float32, SHAPE[1])  # the mean channels of a learned-variance net
    loop = SamplingLoop(network, plan, SHAPE, torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    draw = lambda: torch.randn(SHAPE, generator=generator)  # noqa: E731
    got = loop.run(x_T * plan.init_noise_sigma, 0, plan.noise_draws, draw)
    error = float((got - expected).abs().max() / (1 + expected.abs().max()))
    amplified = config.get("predict_x0") is False and config.get("prediction_type") == "sample"
    bound = TOL_SA_SOLVER if name == "SASolverScheduler" else TOL_THROUGH_ONE_OVER_SIGMA if amplified else TOL
    assert error <= bound, error


@pytest.mark.parametrize(
    "name, config, reason",
    [
        ("DPMSolverMultistepScheduler", {"thresholding": True}, "thresholding"),
        (
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver", "solver_order": 3, "final_sigmas_type": "sigma_min"},
            "order 3",
        ),
        ("UniPCMultistepScheduler", {"thresholding": True}, "thresholding"),
        ("DEISMultistepScheduler", {"thresholding": True}, "thresholding"),
        ("DPMSolverSinglestepScheduler", {"thresholding": True, "solver_order": 3}, "thresholding"),
        ("HeunDiscreteScheduler", {"clip_sample": True}, "clip_sample"),
    ],
)
def test_nonlinear_configs_are_refused_with_the_reason(name, config, reason):
    scheduler = getattr(schedulers, name)(**config)
    scheduler.set_timesteps(5)
    assert reason in scheduler.graph_refusal()
    with pytest.raises(ValueError, match=reason):
        scheduler.linear_table()


FAST_SAMPLERS = [n for n in samplers.NAMES if n not in ("ddpm", "ddim")]


@pytest.mark.parametrize("noise", ["philox", "torch"])
@pytest.mark.parametrize("name", FAST_SAMPLERS)
def test_linear_update_loop_step_does_no_host_sync(small_fastddpm_unet, name, noise, monkeypatch):
    """What lets one CUDA graph replay every evaluation: no tensor-to-host conversion inside the step."""
    skip_without_torchsde(name, noise)
    monkeypatch.setenv("FASTDDPM_BACKEND", "torch")
    pipe = fastddpm.Pipeline(small_fastddpm_unet)
    pipe(batch_size=2, num_inference_steps=4, sampler=name, seed=1, noise=noise, progress=False)
    ((loop, replay, _),) = pipe.engine._loops.values()
    assert isinstance(loop.update, LinearUpdate) and replay is None  # eager on CPU
    loop.start(torch.randn(loop.shape), sample_offset=7)
    with host_syncs_forbidden():
        for _ in range(3):
            loop.step()
    assert loop.step_index.tolist() == [3]


@pytest.mark.gpu
@pytest.mark.parametrize("name", FAST_SAMPLERS)
def test_graphed_linear_update_loop_matches_eager_on_cuda(small_fastddpm_unet, name):
    pipe = fastddpm.Pipeline(copy.deepcopy(small_fastddpm_unet)).to("cuda")
    common = dict(
        batch_size=4, num_inference_steps=6, sampler=name, seed=3, noise="philox", output_type="pt",
        progress=False,
    )  # fmt: skip
    graphed_output = pipe(use_cuda_graph=True, **common)
    assert graphed_output.cuda_graph == "replayed"  # not a silent fallback to eager
    eager = pipe(use_cuda_graph=False, **common).images
    assert_close(graphed_output.images, eager, 1e-5, 0, f"{name}: graph vs eager")
    assert torch.equal(pipe(use_cuda_graph=True, **common).images, graphed_output.images)


@pytest.mark.parametrize(
    "name", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler"]
)
def test_a_schedule_that_repeats_a_timestep_is_refused_in_one_line(name):
    """1000 steps of a 1000-step schedule repeat a timestep (diffusers' step gives NaN there); the table
    says so instead of building non-finite rows or dividing by zero in Python."""
    scheduler = getattr(schedulers, name)()
    scheduler.set_timesteps(1000)
    with pytest.raises(ValueError, match=r"with 1000 steps: step \d+ \(timestep \d+\) has no finite update"):
        scheduler.linear_table()
