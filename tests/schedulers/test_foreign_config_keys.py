"""A scheduler built with from_config from another class's config keeps that class's keys in its config
(diffusers does the same). diffusers' spacings read sigma_min / sigma_max with hasattr(config, ...), so such
keys bound the spacing there, and fastddpm's must follow; a field the class does not have (use_lu_lambdas,
timestep_spacing for the singlestep solver) must switch nothing on. (With FOREIGN's use_lu_lambdas as its own
field, DPMSolverMultistep also checks diffusers' precedence: Karras sigmas, then Lu's lambdas, then the
exponential spacing.)"""

import logging

import pytest
import torch

import fastddpm.schedulers as ours
from tests.schedulers.sampler_parity import run

diffusers = pytest.importorskip("diffusers")

# sigma_min / sigma_max from an Euler config, use_lu_lambdas from a DPM-Solver one, a spacing DPM-Solver
# singlestep does not have
FOREIGN = {
    **diffusers.EulerDiscreteScheduler(sigma_min=0.3, sigma_max=40.0, timestep_spacing="leading").config,
    "use_lu_lambdas": True,
}
CLASSES = [
    "DPMSolverMultistepScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "LMSDiscreteScheduler",
]


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("spacing", [None, "use_karras_sigmas", "use_exponential_sigmas"])
def test_foreign_keys_act_as_in_diffusers(name, spacing):
    logging.getLogger("diffusers").setLevel(logging.ERROR)  # singlestep's lower_order_final notice
    overrides = {spacing: True} if spacing else {}
    a = getattr(ours, name).from_config(FOREIGN, **overrides)
    b = getattr(diffusers, name).from_config(FOREIGN, **overrides)
    assert a.config["sigma_min"] == b.config["sigma_min"] == 0.3
    trace_a, trace_b = run(a, 6), run(b, 6)
    assert torch.equal(a.timesteps, b.timesteps) and torch.equal(a.sigmas.float(), b.sigmas.float())
    if name == "LMSDiscreteScheduler":  # its coefficients differ by rounding (tests/schedulers/test_lms.py)
        error = max(
            float((x - y).abs().max() / (1 + y.abs().max()))
            for (_, x), (_, y) in zip(trace_a, trace_b, strict=True)
        )
        assert error <= 5e-6, error
    else:
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(trace_a, trace_b, strict=True))
