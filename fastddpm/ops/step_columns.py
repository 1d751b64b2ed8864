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

# Multistep tables (DPM-Solver family, ops.multistep_update): one row per step of
#   m      = MS_CONV_X * x + MS_CONV_OUT * model_output          (the converted output: x0 or eps)
#   x_next = MS_A * x + MS_C0 * m + MS_C1 * h[0] + MS_C2 * h[1] + MS_NOISE * z
# with h[0], h[1] the converted outputs of the two previous steps.
MS_CONV_X = 0
MS_CONV_OUT = 1
MS_A = 2
MS_C0 = 3
MS_C1 = 4
MS_C2 = 5
MS_NOISE = 6
MS_NUM_COLUMNS = 7
MS_HISTORY = 2  # earlier converted outputs kept (solver order 3 at most)
