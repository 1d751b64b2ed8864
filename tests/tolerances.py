"""Per-dtype tolerances and a comparison whose failure message says what differs, where, and NaN/inf."""

from __future__ import annotations

import torch

# (atol, rtol) for a fused op against reference.py, by the dtype of its inputs.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    return TOLERANCES[dtype]


def ulps_of_scale(expected: torch.Tensor, ulps: float, dtype: torch.dtype = torch.float32) -> float:
    """An absolute bound of ``ulps`` units in the last place of ``dtype`` at the largest |value| of
    ``expected``: for two implementations of one sequence of correctly rounded operations (a kernel and
    its torch reference), which agree bit for bit where nothing reorders or contracts them (an FMA, a
    vectorised sum), without assuming that they always will."""
    return ulps * torch.finfo(dtype).eps * float(expected.detach().abs().max())


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str = ""
) -> None:
    """Like torch.testing.assert_close, with a message naming how many elements differ and the worst one."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    nonfinite_a, nonfinite_e = ~torch.isfinite(a), ~torch.isfinite(e)
    if nonfinite_a.any() or nonfinite_e.any():
        same = torch.equal(nonfinite_a, nonfinite_e) and torch.equal(
            a[nonfinite_a].nan_to_num(), e[nonfinite_e].nan_to_num()
        )
        assert same, (
            f"{what}: NaN/inf differ: actual has {int(nonfinite_a.sum())} non-finite, expected "
            f"{int(nonfinite_e.sum())} (first in actual at {_where(nonfinite_a)}, in expected at {_where(nonfinite_e)})"
        )
        a, e = a.masked_fill(nonfinite_a, 0), e.masked_fill(nonfinite_e, 0)
    diff = (a - e).abs()
    bad = diff > atol + rtol * e.abs()
    if bad.any():
        worst = int(diff.argmax())
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.numel()} elements differ beyond atol={atol:g} rtol={rtol:g}; "
            f"first at {_where(bad)}; worst at {index}: actual {a.flatten()[worst]:.8g} vs expected "
            f"{e.flatten()[worst]:.8g} (|diff| {float(diff.max()):.3g})"
        )


def _where(mask: torch.Tensor) -> tuple[int, ...] | None:
    found = mask.nonzero()
    return tuple(int(i) for i in found[0]) if len(found) else None
