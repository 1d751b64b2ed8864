"""ops.linear_update: the table-driven samplers' step as one linear map (step_columns.py, LIN_*).

Its per-sampler use is checked in tests/engine/test_linear_tables.py; here the op itself, against a
float64 matrix product, for every state size the samplers use.
"""

import pytest
import torch
from fastddpm.kernels.step_columns import LIN_MATRIX, LIN_MAX_STATE, linear_row_width, linear_state_slots

from fastddpm import ops
from fastddpm.ops import noise as noise_module
from fastddpm.ops import reference

SHAPE = (3, 2, 5, 7)


def _inputs(slots, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x, out, noise = (torch.randn(SHAPE, generator=generator) for _ in range(3))
    state = torch.randn((slots, *SHAPE), generator=generator)
    matrix = torch.randn((slots + 1) * (slots + 3), generator=generator)
    return x, out, noise, state, matrix


@pytest.mark.parametrize("slots", range(LIN_MAX_STATE + 1))
def test_reference_is_the_matrix_product(slots):
    """Measured max |diff| against the float64 product: 9.5e-7 (float32 sums of 8 terms of size ~3)."""
    x, out, noise, state, matrix = _inputs(slots)
    x_next, next_state = reference.linear_update(out, x, state, matrix, noise)
    vectors = torch.stack([x, out, noise, *state.unbind(0)]).double().reshape(slots + 3, -1)
    expected = (matrix.double().reshape(slots + 1, slots + 3) @ vectors).reshape(slots + 1, *SHAPE)
    assert next_state.shape == state.shape
    assert torch.allclose(x_next.double(), expected[0], rtol=0, atol=4e-6)
    assert torch.allclose(next_state.double(), expected[1:], rtol=0, atol=4e-6)


def test_no_noise_is_zero_noise():
    x, out, noise, state, matrix = _inputs(2)
    a = reference.linear_update(out, x, state, matrix, None)
    b = reference.linear_update(out, x, state, matrix, torch.zeros_like(noise))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_dispatch_draws_philox_noise_in_the_op():
    x, out, _, state, matrix = _inputs(4, seed=1)
    noise = noise_module.philox_normal(7, 3, SHAPE[0], SHAPE[1:], 5)
    expected = reference.linear_update(out, x, state, matrix, noise)
    got = ops.linear_update(out, x, state, matrix, ops.PhiloxNoise(7, 3, 5))
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


def test_row_width_and_state_slots_are_inverse():
    for slots in range(LIN_MAX_STATE + 1):
        assert linear_state_slots(linear_row_width(slots)) == slots
        assert linear_row_width(slots) == LIN_MATRIX + (slots + 1) * (slots + 3)
    with pytest.raises(ValueError, match="7 columns"):
        linear_state_slots(7)
