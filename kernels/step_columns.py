"""The column layout of a step table: the contract between the schedulers and the fused sampler updates.

A step table has one float32 row per reverse step, so the sampling loop (and a captured CUDA graph) reads
its coefficients with a device-resident step index instead of computing scalars on the host. The
schedulers build the rows (fastddpm.schedulers: ddpm.ddpm_row, ddim.ddim_row); reference.sampler_step and
the kernels read them by these column numbers. The layout lives here, in ops, because ops is the lowest
layer: the schedulers above it and the kernels below both depend on it.

Columns (the Triton and CUDA kernels index them by these numbers):
"""

from __future__ import annotations

SQRT_ABAR = 0  # sqrt(abar_t)
SQRT_ONE_MINUS_ABAR = 1  # sqrt(1 - abar_t)
COEF_X0 = 2  # DDPM: posterior-mean weight of x0_hat; DDIM: sqrt(abar_prev)
COEF_XT = 3  # DDPM: posterior-mean weight of x_t;    DDIM: sqrt(1 - abar_prev - sigma^2), weight of eps_hat
SIGMA = 4  # noise std for the fixed variance types (DDIM: eta * sigma_t)
LOG_VAR_MIN = 5  # log of the clamped posterior variance (learned_range interpolates from here ...)
LOG_VAR_MAX = 6  # log(beta_t) (... to here)
NOISE_ON = 7  # 1.0 when this step adds noise (DDPM: t > 0; DDIM: eta > 0), else 0.0
NUM_COLUMNS = 8

FIXED_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")
VARIANCE_TYPES = FIXED_VARIANCE_TYPES + ("learned", "learned_range")

# Multistep tables (every sampler but DDPM / DDIM, ops.linear_update): one row per network evaluation.
# A step is linear in its inputs
#     v = (x, model_output, z, h_0, ..., h_{K-1})      (K + 3 vectors; z the step's N(0, I) noise)
# and gives K + 1 outputs
#     (x_next, h'_0, ..., h'_{K-1}) = M v,               M = the row's (K + 1) x (K + 3) matrix,
# where h is the solver's state: earlier converted outputs (newest first), a kept sample (UniPC's
# corrector, Heun's second stage, PNDM's warm-up) or a running sum (PNDM's Runge-Kutta steps). Each row
# says what every state slot becomes, so shifting, keeping and accumulating are all the same op.
LIN_INPUT_DIVISOR = 0  # the network sees x / this (sqrt(sigma^2 + 1) for Euler and Heun, else 1)
LIN_MATRIX = 1  # then M, row-major
LIN_X, LIN_OUT, LIN_NOISE, LIN_STATE = 0, 1, 2, 3  # input columns of M: x, model_output, z, then h_k
LIN_MAX_STATE = 5  # PNDM's Runge-Kutta warm-up: 3 outputs, the kept sample and the running sum


def linear_row_width(slots: int) -> int:
    """Columns of a multistep table whose rows carry ``slots`` state vectors."""
    return LIN_MATRIX + (slots + 1) * (slots + 3)


def linear_state_slots(row_width: int) -> int:
    """The K of a multistep table row ``row_width`` columns wide."""
    for slots in range(LIN_MAX_STATE + 1):
        if linear_row_width(slots) == row_width:
            return slots
    raise ValueError(f"a multistep table row has {row_width} columns, which fits no state size")
