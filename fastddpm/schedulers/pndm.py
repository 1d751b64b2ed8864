"""PNDMScheduler: pseudo numerical methods for diffusion models (Liu et al. 2022), with diffusers 0.42's
numbers: four Runge-Kutta (PRK) warm-up steps of four network calls each, then the linear multistep
(PLMS) update of order up to 4; with ``skip_prk_steps`` PLMS warms up by itself (PLMS as in Stable
Diffusion's first releases).

Every update maps (x_t, eps') to x_prev with the pseudo-numerical transfer
    x_prev = sqrt(abar_prev / abar_t) x_t - (abar_prev - abar_t) eps' / (abar_t sqrt(1 - abar_prev)
             + sqrt(abar_t (1 - abar_t) abar_prev)),
eps' being the RK or Adams-Bashforth combination of the network's outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastddpm.schedulers import schedules
from fastddpm.schedulers.base import ALL_SCHEDULERS, TIMESTEP_SPACINGS, SchedulerOutput
from fastddpm.schedulers.config_mixin import ConfigMixin, register_to_config
from fastddpm.schedulers.linear_rows import OUT, ZERO, Lin, LinearStep, TableDriven, X, slot

PNDM_ORDER = 4


class PNDMScheduler(TableDriven, ConfigMixin):
    """PRK warm-up + PLMS, as diffusers.PNDMScheduler."""

    kind = "pndm"
    order = 1
    init_noise_sigma = 1.0
    _compatibles = ALL_SCHEDULERS

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ) -> None:
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"scheduler config field prediction_type={prediction_type!r} is not epsilon or v_prediction"
            )
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"scheduler config field timestep_spacing={timestep_spacing!r} is not one of "
                f"{', '.join(TIMESTEP_SPACINGS)}"
            )
        if trained_betas is None and beta_schedule not in schedules.BETA_SCHEDULES:
            raise ValueError(
                f"scheduler config field beta_schedule={beta_schedule!r} is not one of "
                f"{', '.join(schedules.BETA_SCHEDULES)}"
            )
        self.betas = schedules.make_betas(
            beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas
        )
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.pndm_order = PNDM_ORDER
        self.num_inference_steps: int | None = None
        self._timesteps = np.arange(0, num_train_timesteps)[::-1].copy()
        self.prk_timesteps = None
        self.plms_timesteps = None
        self.timesteps = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.cur_model_output: Any = 0  # the PRK step's running weighted sum of outputs
        self.counter = 0  # network calls so far
        self.cur_sample: torch.Tensor | None = None
        self.ets: list[torch.Tensor] = []  # earlier outputs, for PLMS

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        c, n = self.config, int(num_inference_steps)
        if n < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        self.num_inference_steps = n
        train = c.num_train_timesteps
        if c.timestep_spacing == "linspace":
            self._timesteps = np.linspace(0, train - 1, n).round().astype(np.int64)
        elif c.timestep_spacing == "leading":
            self._timesteps = (np.arange(0, n) * (train // n)).round() + c.steps_offset
        else:
            self._timesteps = np.round(np.arange(train, 0, -train / n))[::-1].astype(np.int64) - 1
        ts = self._timesteps
        if c.skip_prk_steps:
            # PLMS warms up with a repeated timestep (its second call averages two outputs)
            self.prk_timesteps = np.array([])
            self.plms_timesteps = np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1].copy()
        else:
            if n < self.pndm_order:  # diffusers fails here with a numpy broadcast error
                raise ValueError(
                    f"num_inference_steps={n}: PNDM's Runge-Kutta warm-up needs at least {self.pndm_order} steps "
                    "(skip_prk_steps=True takes fewer)"
                )
            half = train // n // 2  # PRK's midpoints
            prk = np.array(ts[-self.pndm_order :]).repeat(2) + np.tile(np.array([0, half]), self.pndm_order)
            self.prk_timesteps = (prk[:-1].repeat(2)[1:-1])[::-1].copy()
            self.plms_timesteps = ts[:-3][::-1].copy()
        timesteps = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self.timesteps = torch.from_numpy(timesteps).to(device)
        self._reset_state()

    def scale_model_input(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return sample

    def step(
        self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, return_dict: bool = True
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        if self.counter < len(self.prk_timesteps if self.prk_timesteps is not None else []) and not (
            self.config.skip_prk_steps
        ):
            return self.step_prk(model_output, timestep, sample, return_dict)
        return self.step_plms(model_output, timestep, sample, return_dict)

    def _check_ready(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step: PNDM needs the number of inference steps")

    def step_prk(
        self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, return_dict: bool = True
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One of the four calls of a classical RK4 step (weights 1/6, 1/3, 1/3, 1/6)."""
        self._check_ready()
        n, phase = self.num_inference_steps, self.counter % 4
        diff_to_prev = 0 if self.counter % 2 else self.config.num_train_timesteps // n // 2
        prev_timestep = timestep - diff_to_prev
        timestep = self.prk_timesteps[self.counter // 4 * 4]
        if phase == 0:
            self.cur_model_output += 1 / 6 * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif phase in (1, 2):
            self.cur_model_output += 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        prev = self._get_prev_sample(cur_sample, timestep, prev_timestep, model_output)
        self.counter += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def step_plms(
        self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, return_dict: bool = True
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """Adams-Bashforth of order len(ets) (up to 4) over the network's outputs."""
        self._check_ready()
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ValueError(
                "step_plms needs the PRK warm-up first (3 stored outputs); or set skip_prk_steps=True"
            )
        stride = self.config.num_train_timesteps // self.num_inference_steps
        prev_timestep = timestep - stride
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:  # the repeated warm-up timestep: redo the first step from x_T with the averaged output
            prev_timestep = timestep
            timestep = timestep + stride
        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(ets) == 1 and self.counter == 1:
            model_output = (model_output + ets[-1]) / 2
            sample = self.cur_sample
            self.cur_sample = None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        prev = self._get_prev_sample(sample, timestep, prev_timestep, model_output)
        self.counter += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def _get_prev_sample(self, sample, timestep, prev_timestep, model_output) -> torch.Tensor:
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = (
            self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        )
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        if self.config.prediction_type == "v_prediction":
            model_output = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
        sample_coeff = (alpha_prod_t_prev / alpha_prod_t) ** (0.5)
        denom = alpha_prod_t * beta_prod_t_prev ** (0.5) + (
            alpha_prod_t * beta_prod_t * alpha_prod_t_prev
        ) ** (0.5)
        return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * model_output / denom

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        abar = self.alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
        timesteps = timesteps.to(original_samples.device)
        sqrt_abar = (abar[timesteps] ** 0.5).flatten()
        sqrt_one_minus = ((1 - abar[timesteps]) ** 0.5).flatten()
        while sqrt_abar.dim() < original_samples.dim():
            sqrt_abar, sqrt_one_minus = sqrt_abar.unsqueeze(-1), sqrt_one_minus.unsqueeze(-1)
        return sqrt_abar * original_samples + sqrt_one_minus * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ------------------------------------------------------------------------------ the step table
    # slots: the last three outputs PLMS keeps (newest first), the kept sample, the Runge-Kutta sum
    OUTPUTS, KEPT, RK_SUM = (0, 1, 2), 3, 4

    @property
    def state_slots(self) -> int:
        return 4 if self.config.skip_prk_steps else 5

    def _transfer(self, sample: Lin, timestep: int, prev_timestep: int, model_output: Lin) -> Lin:
        """_get_prev_sample in float64 over linear combinations."""
        abar = self.alphas_cumprod
        alpha_prod_t = float(abar[timestep])
        alpha_prod_t_prev = float(abar[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod)
        beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
        if self.config.prediction_type == "v_prediction":
            model_output = alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample
        sample_coeff = (alpha_prod_t_prev / alpha_prod_t) ** 0.5
        denom = alpha_prod_t * beta_prod_t_prev**0.5 + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev) ** 0.5
        return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) / denom * model_output

    def linear_steps(self) -> list[LinearStep]:
        """``step_prk`` then ``step_plms`` call by call, tracking how many outputs PLMS holds."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before building the step table")
        n, train = self.num_inference_steps, self.config.num_train_timesteps
        stride = train // n
        outputs = [slot(k) for k in self.OUTPUTS]
        pushed = [OUT, outputs[0], outputs[1]]
        kept, rk_sum = slot(self.KEPT), (slot(self.RK_SUM) if not self.config.skip_prk_steps else None)
        timesteps = self.timesteps.tolist()
        prk_calls = 0 if self.config.skip_prk_steps else len(self.prk_timesteps)
        steps, held = [], 0  # held: len(self.ets) as step() leaves it
        for counter, timestep in enumerate(timesteps):
            state = outputs + [kept] + ([rk_sum] if rk_sum is not None else [])
            if counter < prk_calls:
                phase = counter % 4
                prev_timestep = timestep - (0 if counter % 2 else stride // 2)
                base_timestep = int(self.prk_timesteps[counter // 4 * 4])
                if phase == 0:
                    state = pushed + [X, OUT / 6]
                    held += 1
                    x_next = self._transfer(X, base_timestep, prev_timestep, OUT)
                elif phase in (1, 2):
                    state[self.RK_SUM] = rk_sum + OUT / 3
                    x_next = self._transfer(kept, base_timestep, prev_timestep, OUT)
                else:
                    state[self.RK_SUM] = ZERO
                    x_next = self._transfer(kept, base_timestep, prev_timestep, rk_sum + OUT / 6)
            elif counter == 1 and self.config.skip_prk_steps:
                # the repeated warm-up timestep: the first step redone from x_T with the mean output
                x_next = self._transfer(kept, timestep + stride, timestep, (OUT + outputs[0]) / 2)
            else:
                held = min(held, 3) + 1
                state[: len(self.OUTPUTS)] = pushed
                if held == 1:
                    eps = OUT
                    state[self.KEPT] = X
                elif held == 2:
                    eps = (3 * OUT - outputs[0]) / 2
                elif held == 3:
                    eps = (23 * OUT - 16 * outputs[0] + 5 * outputs[1]) / 12
                else:
                    eps = (1 / 24) * (55 * OUT - 59 * outputs[0] + 37 * outputs[1] - 9 * outputs[2])
                x_next = self._transfer(X, timestep, timestep - stride, eps)
            steps.append(LinearStep(x_next, state))
        return steps
