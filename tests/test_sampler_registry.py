"""One registry of sampler names (fastddpm/sampler_registry.py): the CLI's choices, the package's exports and
the README's sampler table come from it, every registered name samples, and a new name is one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import fastddpm
from fastddpm import sampler_registry
from fastddpm.sampler_registry import NAMES, SAMPLERS, SamplerEntry
from tests.optional_packages import skip_without_torchsde

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_sampler_table() -> dict[str, str]:
    """name -> the class named in its row of the README's table of sampler names."""
    rows = re.findall(r"^\| ([a-z0-9+\-]+) \| `(\w+)", README.read_text(), flags=re.MULTILINE)
    return dict(rows)


def test_the_cli_choices_and_the_exports_are_the_registry():
    from fastddpm.cli.main import SAMPLER_NAMES, build_parser

    assert SAMPLER_NAMES == NAMES
    sample = build_parser()._subparsers._group_actions[0].choices["sample"]
    (sampler_option,) = [a for a in sample._actions if "--sampler" in a.option_strings]
    assert tuple(sampler_option.choices) == NAMES
    for entry in SAMPLERS.values():
        assert entry.class_name in fastddpm.__all__
        assert getattr(fastddpm, entry.class_name).__module__ == f"fastddpm.schedulers.{entry.module}"


def test_the_readme_table_lists_every_name_with_its_class():
    table = readme_sampler_table()
    assert list(table) == list(NAMES)
    assert table == {name: entry.class_name for name, entry in SAMPLERS.items()}


@pytest.fixture(scope="module")
def digits():
    return fastddpm.load()


@pytest.mark.parametrize("noise", ["philox", "torch"])
@pytest.mark.parametrize("name", NAMES)
def test_every_registered_name_samples(digits, name, noise):
    skip_without_torchsde(name, noise)
    out = digits(
        batch_size=2,
        num_inference_steps=4,
        sampler=name,
        seed=1,
        noise=noise,
        output_type="pt",
        progress=False,
    )
    assert out.images.shape == (2, *digits.sample_shape())
    assert torch.isfinite(out.images).all() and out.images.std() > 0.05


def test_pndm_with_too_few_steps_for_its_warm_up_is_refused_in_one_line(digits):
    with pytest.raises(
        ValueError, match=r"^num_inference_steps=3: PNDM's Runge-Kutta warm-up needs at least 4"
    ):
        digits(batch_size=1, num_inference_steps=3, sampler="pndm", progress=False)


def test_a_new_sampler_is_one_registry_line(digits, monkeypatch):
    """A variant of an existing scheduler class needs nothing but its line: the pipeline resolves it, plans
    it and samples it in the fused loop."""
    monkeypatch.setitem(
        sampler_registry.SAMPLERS,
        "dpm++1m",
        SamplerEntry(
            "dpm_solver", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 1}
        ),
    )
    run = dict(batch_size=2, num_inference_steps=3, seed=4, noise="philox", output_type="pt", progress=False)
    out = digits(sampler="dpm++1m", **run)
    assert out.cuda_graph == "off"  # ran in the fused loop (an eager plan would say why on request)
    ((loop, _, _),) = digits.engine._loops.values()
    assert loop.update.state_slots == 2
    first_order = fastddpm.DPMSolverMultistepScheduler.from_config(digits.scheduler_config, solver_order=1)
    # the registry line and the scheduler it names: one class, one config, so the same table and loop
    assert torch.equal(out.images, digits(sampler=first_order, **run).images)
