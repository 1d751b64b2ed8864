"""Sample quality of the fast samplers on the embedded digits model, judged by the digit classifier of
test_default_model.py: DPM-Solver++ (2M) at 10 steps must score within 0.03 of DDIM at 50 steps."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_default_model import classify, digit_classifier

SAMPLES = 300  # a forward of the digits model at batch 300 takes ~3.5 s on a shared 2-core CPU


def quality(pipe, classifier, sampler: str, steps: int) -> tuple[float, np.ndarray]:
    images = pipe(
        batch_size=SAMPLES, sampler=sampler, num_inference_steps=steps, seed=0, noise="philox",
        output_type="np", progress=False,
    ).images  # fmt: skip
    return classify(classifier, (images * 255).round().astype(np.uint8))


@pytest.mark.slow
def test_dpm_solver_at_10_steps_is_within_0_03_of_ddim_at_50():
    import fastddpm

    pipe, classifier = fastddpm.load(), digit_classifier()
    ddim, ddim_shares = quality(pipe, classifier, "ddim", 50)
    dpm, dpm_shares = quality(pipe, classifier, "dpm++2m", 10)
    print(f"\nconfidence: ddim@50 {ddim:.3f}, dpm++2m@10 {dpm:.3f}; min class share {dpm_shares.min():.3f}")
    assert dpm >= ddim - 0.03
    assert dpm_shares.min() >= 0.04  # every digit still drawn


def test_the_quality_table_covers_every_registered_sampler_once():
    """bench/sampler_quality.py lists its samplers by hand, in two plot groups: a sampler added to the registry
    and forgotten there would be missing from the README's quality table."""
    from bench.sampler_quality import REFERENCES, SAMPLERS
    from fastddpm.sampler_registry import NAMES

    assert len(SAMPLERS) == len(set(SAMPLERS))
    assert sorted(SAMPLERS + [name for name, _ in REFERENCES]) == sorted(NAMES)
