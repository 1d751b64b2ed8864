"""UniPCMultistepScheduler: the unified predictor-corrector of Zhao et al. 2023 (UniP + UniC, B(h) variants
bh1 / bh2, data or noise prediction), with diffusers 0.42's numbers.

Each step first corrects the sample the previous step predicted, using the new model output (UniC), then
predicts the next sample from the history (UniP). Both combine the last outputs through weights rho that
solve a small Vandermonde system in r_k = (lambda_k - lambda_0) / h.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fastddpm.schedulers.base import SchedulerOutput
from fastddpm.schedulers.config_mixin import register_to_config
from fastddpm.schedulers.linear_rows import OUT, Lin, LinearStep, X, slot
from fastddpm.schedulers.multistep import MULTISTEP_PREDICTIONS, MultistepScheduler

SOLVER_TYPES = ("bh1", "bh2")


class UniPCMultistepScheduler(MultistepScheduler):
    """UniPC, as diffusers.UniPCMultistepScheduler."""

    kind = "unipc"
    prediction_types = (*MULTISTEP_PREDICTIONS, "flow_prediction")
    takes_flow_sigmas = True

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        predict_x0: bool = True,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: list[int] = [],  # noqa: B006 (diffusers' signature; never mutated)
        solver_p: Any = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: str = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        sigma_min: float | None = None,
        sigma_max: bool | None = None,
        shift_terminal: bool | None = None,
    ) -> None:
        if solver_type in ("midpoint", "heun", "logrho"):  # diffusers maps the other solvers' names
            self.register_to_config(solver_type="bh2")
        elif solver_type not in SOLVER_TYPES:
            raise ValueError(f"scheduler config field solver_type={solver_type!r} is not one of bh1, bh2")
        if final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(
                f"scheduler config field final_sigmas_type={final_sigmas_type!r} is not zero or sigma_min"
            )
        if prediction_type == "flow_prediction" and not predict_x0:
            raise ValueError(
                "scheduler config field prediction_type='flow_prediction' needs predict_x0=True (as in diffusers)"
            )
        self._setup_schedule(
            {
                "use_dynamic_shifting": use_dynamic_shifting,
                "solver_p": solver_p,
                "shift_terminal": shift_terminal,
            }
        )
        self.predict_x0 = predict_x0
        self.disable_corrector = disable_corrector
        self.solver_p = None
        self.timestep_list: list[Any] = [None] * solver_order
        self.last_sample: torch.Tensor | None = None
        self.this_order = 1

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs: Any) -> None:
        super().set_timesteps(num_inference_steps, device, **kwargs)
        self.timestep_list = [None] * self.config.solver_order
        self.last_sample = None

    def convert_model_output(
        self, model_output: torch.Tensor, *args: Any, sample: torch.Tensor | None = None
    ):
        """x0 (predict_x0) or eps from the model output at the current step."""
        sample = args[-1] if sample is None and args else sample
        c = self.config
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(self.sigmas[self.step_index])
        if self.predict_x0:
            if c.prediction_type == "epsilon":
                x0 = (sample - sigma_t * model_output) / alpha_t
            elif c.prediction_type == "sample":
                x0 = model_output
            elif c.prediction_type == "flow_prediction":
                x0 = sample - self.sigmas[self.step_index] * model_output
            else:
                x0 = alpha_t * sample - sigma_t * model_output
            return self._threshold_sample(x0) if c.thresholding else x0
        if c.prediction_type == "epsilon":
            return model_output
        if c.prediction_type == "sample":
            return (sample - alpha_t * model_output) / sigma_t
        return alpha_t * model_output + sigma_t * sample

    def _bh_system(self, order: int, now: int, history_start: int, device):
        """(h, h_phi_1, B(h), rks, D1s, R, b) of a UniP (now = step index) or UniC (now = index - 1) update."""
        lam_t, alpha_t, sigma_t = self._lambda_alpha_sigma_at(now + 1, device)
        lam_s0, alpha_s0, sigma_s0 = self._lambda_alpha_sigma_at(now, device)
        h = lam_t - lam_s0
        m = self.model_outputs
        rks, D1s = [], []
        for i in range(1, order):
            lam_si = self._lambda_alpha_sigma_at(history_start - i, device)[0]
            rk = (lam_si - lam_s0) / h
            rks.append(rk)
            D1s.append((m[-(i + 1)] - m[-1]) / rk)
        rks.append(torch.ones((), device=device))
        rks = torch.stack(rks)
        hh = -h if self.predict_x0 else h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        B_h = hh if self.config.solver_type == "bh1" else torch.expm1(hh)
        R, b, factorial_i = [], [], 1
        for i in range(1, order + 1):
            R.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * factorial_i / B_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        R, b = torch.stack(R), torch.stack(b)
        D1s = torch.stack(D1s, dim=1) if D1s else None
        return (alpha_t, sigma_t, alpha_s0, sigma_s0), h_phi_1, B_h, D1s, R, b

    def _lambda_alpha_sigma_at(self, index: int, device):
        alpha, sigma = self._sigma_to_alpha_sigma_t(self.sigmas[index].to(device))
        return torch.log(alpha) - torch.log(sigma), alpha, sigma

    def _base(self, coefs, h_phi_1, x):
        alpha_t, sigma_t, alpha_s0, sigma_s0 = coefs
        if self.predict_x0:
            return sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * self.model_outputs[-1], alpha_t
        return alpha_t / alpha_s0 * x - sigma_t * h_phi_1 * self.model_outputs[-1], sigma_t

    def _predict(self, x: torch.Tensor, order: int) -> torch.Tensor:
        """UniP: the next sample from the history."""
        i = self.step_index
        coefs, h_phi_1, B_h, D1s, R, b = self._bh_system(order, i, i, x.device)
        x_t_, scale = self._base(coefs, h_phi_1, x)
        if D1s is None:
            return (x_t_ - scale * B_h * 0).to(x.dtype)
        if order == 2:
            rhos_p = torch.ones(1, dtype=x.dtype, device=x.device) * 0.5
        else:
            rhos_p = torch.linalg.solve(R[:-1, :-1], b[:-1]).to(x.device).to(x.dtype)
        pred_res = torch.einsum("k,bkc...->bc...", rhos_p, D1s)
        return (x_t_ - scale * B_h * pred_res).to(x.dtype)

    def _correct(
        self, model_t: torch.Tensor, last_sample: torch.Tensor, this_sample: torch.Tensor, order: int
    ):
        """UniC: the previous step's prediction corrected with the model output at its target."""
        i = self.step_index
        coefs, h_phi_1, B_h, D1s, R, b = self._bh_system(order, i - 1, i - 1, this_sample.device)
        x_t_, scale = self._base(coefs, h_phi_1, last_sample)
        if order == 1:
            rhos_c = torch.ones(1, dtype=last_sample.dtype, device=this_sample.device) * 0.5
        else:
            rhos_c = torch.linalg.solve(R, b).to(this_sample.device).to(last_sample.dtype)
        corr_res = torch.einsum("k,bkc...->bc...", rhos_c[:-1], D1s) if D1s is not None else 0
        D1_t = model_t - self.model_outputs[-1]
        return (x_t_ - scale * B_h * (corr_res + rhos_c[-1] * D1_t)).to(last_sample.dtype)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        self._start_step(timestep)
        i = self.step_index
        use_corrector = i > 0 and i - 1 not in self.disable_corrector and self.last_sample is not None
        converted = self.convert_model_output(model_output, sample=sample)
        if use_corrector:
            sample = self._correct(converted, self.last_sample, sample, self.this_order)
        for k in range(self.config.solver_order - 1):
            self.timestep_list[k] = self.timestep_list[k + 1]
        self.timestep_list[-1] = timestep
        self._push_model_output(converted)
        if self.config.lower_order_final:
            order = min(self.config.solver_order, len(self.timesteps) - i)
        else:
            order = self.config.solver_order
        self.this_order = min(order, self.lower_order_nums + 1)  # warm-up: not enough history yet
        self.last_sample = sample
        prev = self._predict(sample, self.this_order)
        if self.lower_order_nums < self.config.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    # ------------------------------------------------------------------------------ the step table
    @property
    def state_slots(self) -> int:
        """The last solver_order converted outputs (the corrector reads them all), then the kept sample."""
        return self.config.solver_order + 1

    def graph_refusal(self) -> str | None:
        if self.config.thresholding:
            return "dynamic thresholding is not a linear update"
        return super().graph_refusal()

    def _vp_schedule(self) -> tuple[list[float], list[float], list[float]]:
        """float64 (lambda, alpha, sigma) at every entry of ``sigmas``, for one table build."""
        lam, alpha, sigma = [], [], []
        flow = self.config.use_flow_sigmas
        for j in range(len(self.sigmas)):
            if flow:  # x_t = (1 - s) x0 + s eps
                a, s = 1 - float(self.sigmas[j]), float(self.sigmas[j])
            else:
                a = 1 / (float(self.sigmas[j]) ** 2 + 1) ** 0.5
                s = float(self.sigmas[j]) * a
            alpha.append(a)
            sigma.append(s)
            lam.append(math.log(a) - math.log(s) if s > 0 else math.inf)
        return lam, alpha, sigma

    def _bh_weights(self, order: int, now: int, corrector: bool, vp):
        """float64 (scale, a, h_phi_1, B_h, rks, rhos) of ``_bh_system`` for a UniP / UniC update; IEEE
        arithmetic as torch's (a zero-length last step, h = 0, gives inf / nan in weights it never uses).
        ``vp``: ``_vp_schedule()``."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._bh_weights_ieee(order, now, corrector, *vp)

    def _bh_weights_ieee(self, order: int, now: int, corrector: bool, lam, alpha, sigma):
        h = np.float64(lam[now + 1] - lam[now])  # numpy: x / 0 is inf or nan, as in torch
        rks = [(lam[now - k] - lam[now]) / h for k in range(1, order)] + [1.0]
        hh = -h if self.predict_x0 else h
        h_phi_1 = math.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        B_h = hh if self.config.solver_type == "bh1" else math.expm1(hh)
        R, b, factorial_i = [], [], 1
        for i in range(1, order + 1):
            R.append([rk ** (i - 1) for rk in rks])
            b.append(h_phi_k * factorial_i / B_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        R, b = np.array(R), np.array(b)
        if corrector:
            rhos = [0.5] if order == 1 else np.linalg.solve(R, b).tolist()
        else:
            rhos = [0.5] if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1]).tolist() if order > 2 else []
        if self.predict_x0:
            scale, a = alpha[now + 1], sigma[now + 1] / sigma[now]
        else:
            scale, a = sigma[now + 1], alpha[now + 1] / alpha[now]
        return scale, a, h_phi_1, B_h, rks, rhos

    def _converted(self, i: int, vp) -> Lin:
        """convert_model_output at step i (``vp``: ``_vp_schedule()``)."""
        _, alphas, sigmas = vp
        alpha, sigma = alphas[i], sigmas[i]
        prediction = self.config.prediction_type
        if self.predict_x0:
            return {
                "epsilon": (X - sigma * OUT) / alpha,
                "sample": OUT,
                "v_prediction": alpha * X - sigma * OUT,
                "flow_prediction": X - float(self.sigmas[i]) * OUT,
            }[prediction]
        return {"epsilon": OUT, "sample": (X - alpha * OUT) / sigma, "v_prediction": alpha * OUT + sigma * X}[
            prediction
        ]

    def linear_steps(self) -> list[LinearStep]:
        """Per step: UniC corrects the previous prediction (slots: outputs newest first, then the kept
        sample), then UniP predicts from the corrected sample, with the orders ``step`` takes."""
        p, n = self.config.solver_order, len(self.timesteps)
        kept = slot(p)
        steps, previous_order, vp = [], 1, self._vp_schedule()
        for i in range(n):
            m = self._converted(i, vp)
            sample = X
            if i > 0 and i - 1 not in self.disable_corrector:
                scale, a, h_phi_1, B_h, rks, rhos = self._bh_weights(previous_order, i - 1, True, vp)
                res = sum(
                    (rhos[k - 1] * (slot(k) - slot(0)) / rks[k - 1] for k in range(1, previous_order)), Lin()
                )
                res = res + rhos[-1] * (m - slot(0))
                sample = a * kept - scale * h_phi_1 * slot(0) - scale * B_h * res
            order = min(p, n - i) if self.config.lower_order_final else p
            order = min(order, min(i, p) + 1)
            outputs = [m] + [slot(k) for k in range(p - 1)]  # the history after the push
            scale, a, h_phi_1, B_h, rks, rhos = self._bh_weights(order, i, False, vp)
            x_next = a * sample - scale * h_phi_1 * m
            if order > 1:
                res = sum((rhos[k - 1] * (outputs[k] - m) / rks[k - 1] for k in range(1, order)), Lin())
                x_next = x_next - scale * B_h * res
            steps.append(LinearStep(x_next, [*outputs, sample]))
            previous_order = order
        return steps
