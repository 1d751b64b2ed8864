"""bench/sampler_quality.py's pixel Frechet distance, against its closed forms and scipy's sqrtm."""

import numpy as np
import pytest

from bench.sampler_quality import pixel_fd


def test_pixel_fd_closed_forms_and_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 5)) @ rng.normal(size=(5, 5))
    assert pixel_fd(a, a) == pytest.approx(0, abs=1e-9)
    shift = np.array([1.0, -2.0, 0.0, 0.5, 3.0])
    assert pixel_fd(a, a + shift) == pytest.approx(float((shift**2).sum()), rel=1e-9)
    # isotropic Gaussians N(0, s1^2 I), N(0, s2^2 I) in d dims: d (s1 - s2)^2, up to sampling error
    x, y = rng.normal(size=(20000, 3)), 2.0 * rng.normal(size=(20000, 3))
    assert pixel_fd(x, y) == pytest.approx(3.0, rel=0.03)
    linalg = pytest.importorskip("scipy.linalg")
    b = rng.normal(size=(4000, 5)) @ rng.normal(size=(5, 5))
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(
        cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real
    )
    assert pixel_fd(a, b) == pytest.approx(expected, rel=1e-9)
