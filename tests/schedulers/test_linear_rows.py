"""The Lin algebra the row builders write their updates in, and the table layout it produces."""

import numpy as np
import pytest
import torch
from fastddpm.kernels.step_columns import LIN_INPUT_DIVISOR, LIN_MATRIX, linear_row_width

from fastddpm.ops import reference
from fastddpm.schedulers.linear_rows import NOISE, OUT, LinearStep, X, build_table, shifted, slot


def test_lin_arithmetic():
    lin = 2 * X - OUT / 4 + np.float64(3.0) * slot(1) - (-NOISE)
    assert lin.terms == {0: 2.0, 1: -0.25, 2: 1.0, 4: 3.0}
    assert (lin - lin).terms == {0: 0.0, 1: 0.0, 2: 0.0, 4: 0.0}
    assert (X / 0.0).terms == {0: float("inf")}  # IEEE, as torch: the table refuses non-finite rows


def test_a_built_row_is_the_map_the_op_applies():
    """Write a step with Lin, build its row, apply it with the reference op: the same as the expressions."""
    x, out, z = torch.randn(3, 2, 3, 4, 5).unbind(0)
    state = torch.randn(2, 2, 3, 4, 5)
    m = 0.5 * X - 1.5 * OUT
    step = LinearStep(1.25 * X + 0.5 * m - 0.75 * slot(0) + 0.1 * NOISE, shifted(m, 2), input_divisor=2.0)
    table = build_table([step], slots=2)
    assert table.shape == (1, linear_row_width(2)) and table[0, LIN_INPUT_DIVISOR] == 2.0
    x_next, next_state = reference.linear_update(out, x, state, table[0, LIN_MATRIX:], z)
    m_value = 0.5 * x - 1.5 * out
    torch.testing.assert_close(x_next, 1.25 * x + 0.5 * m_value - 0.75 * state[0] + 0.1 * z)
    torch.testing.assert_close(next_state[0], m_value)
    torch.testing.assert_close(next_state[1], state[0])


def test_build_table_refuses_a_step_that_does_not_fit():
    with pytest.raises(ValueError, match="sets 1 state slots, the table has 2"):
        build_table([LinearStep(X, [X])], slots=2)
    with pytest.raises(ValueError, match="reads state slot 2, the table has 2"):
        build_table([LinearStep(slot(2), [X, X])], slots=2)
