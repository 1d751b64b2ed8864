"""One function per fused op; each call goes to the first backend that can serve it.

Backends, in the default order: ``ext`` (the C++/CUDA extension fastddpm._C), ``triton`` (kernels/), and
``torch`` (reference.py, any device). Each backend module exposes, for every op it implements, the op
itself and ``why_not_<op>(...)`` returning a list of reasons it cannot serve that call (empty: it can).
``FASTDDPM_BACKEND=auto`` (default) takes the first backend that can serve; naming one backend
(``ext``, ``triton`` or ``torch``) uses only that one for every op it implements and raises, with its
reasons, when it cannot serve a call (ops it does not implement at all go the auto way: the extension
has no sampler_step, the Triton kernels no attention).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType

import torch

BACKEND_ORDER = ("ext", "triton", "torch")
_MODULES = {
    "ext": "fastddpm.ops.backend_ext",
    "triton": "fastddpm.ops.backend_triton",
    "torch": "fastddpm.ops.backend_torch",
}
_loaded: dict[str, ModuleType | str] = {}


class BackendUnavailable(RuntimeError):
    """The backend named in FASTDDPM_BACKEND cannot serve this call; the message lists why."""


@dataclass(frozen=True)
class PhiloxNoise:
    """Noise to be drawn where it is used: N(0, I) keyed by (seed, sample index, stream), as noise.py defines.

    ``stream`` and ``sample_offset`` are ints or 0-d int64 tensors on the sample's device (so one captured
    graph serves every step and every batch); sample b of the batch has sample index ``sample_offset + b``.
    """

    seed: int
    sample_offset: int | torch.Tensor
    stream: int | torch.Tensor


def _backend(name: str) -> ModuleType | str:
    """The backend module, or a string saying why it cannot be imported."""
    if name not in _loaded:
        try:
            _loaded[name] = importlib.import_module(_MODULES[name])
        except Exception as exc:  # an unbuilt extension or a missing triton is a reason, not a crash
            _loaded[name] = f"{name} backend unavailable: {type(exc).__name__}: {exc}"
    return _loaded[name]


def selected_backends() -> tuple[str, ...]:
    choice = os.environ.get("FASTDDPM_BACKEND", "auto").strip().lower() or "auto"
    if choice == "auto":
        return BACKEND_ORDER
    if choice not in _MODULES:
        raise ValueError(f"FASTDDPM_BACKEND={choice!r} is not one of auto, {', '.join(BACKEND_ORDER)}")
    return (choice,)


def why_not(backend: str, op: str, *args, **kwargs) -> list[str]:
    """Reasons ``backend`` cannot serve ``op`` for these arguments (empty list: it can)."""
    module = _backend(backend)
    if isinstance(module, str):
        return [module]
    check = getattr(module, f"why_not_{op}", None)
    if check is None or not hasattr(module, op):
        return [f"{backend} backend does not implement {op}"]
    return list(check(*args, **kwargs))


def _signature(value) -> object:
    """What a backend's decision can depend on: tensor metadata and plain values, never tensor data."""
    if isinstance(value, torch.Tensor):
        # a size-1 dimension's stride says nothing about the layout (torch's contiguity checks skip it), and
        # eager kernels and torch.compile's fake tensors give it different values: (32, 1, 32, 32) vs
        # (32, 1, 1, 1) for the same 2 x 32 x 1 x 1 tensor, so a compiled U-Net missed its eager decisions
        strides = tuple(
            0 if size == 1 else stride for size, stride in zip(value.shape, value.stride(), strict=True)
        )
        return (value.device, value.dtype, tuple(value.shape), strides, value.requires_grad)
    if isinstance(value, PhiloxNoise):
        return ("philox", _signature(value.sample_offset), _signature(value.stream))
    if isinstance(value, (tuple, list)):
        return tuple(_signature(v) for v in value)
    return value


# (op, backend choice, grad mode, argument signature) -> the backend that serves it. Deciding costs tens of
# microseconds per call (each backend's checks), the U-Net makes ~100 calls per forward, and torch.compile
# cannot trace some checks (library loads): so each decision is made once, eagerly, and then looked up.
_decisions: dict[tuple, str] = {}


def forget_decisions() -> None:
    """Decide every call afresh (after a backend was rebuilt, or in tests that swap backends)."""
    _decisions.clear()


def _implements(backend: str, op: str) -> bool:
    module = _backend(backend)
    return not isinstance(module, str) and hasattr(module, op)


def _candidates(op: str) -> tuple[str, ...]:
    names = selected_backends()
    if len(names) == 1 and not isinstance(_backend(names[0]), str) and not _implements(names[0], op):
        return BACKEND_ORDER  # a named backend serves the ops it has; the others go the usual way
    return names


def _dispatch(op: str, *args, **kwargs):
    names = _candidates(op)
    # keyword arguments by sorted name: torch 2.11's Dynamo cannot sort (name, tensor) pairs under compile
    keywords = tuple((name, _signature(kwargs[name])) for name in sorted(kwargs))
    key = (op, names, torch.is_grad_enabled(), _signature(args), keywords)
    chosen = _decisions.get(key)
    if chosen is None:
        if torch.compiler.is_compiling() and "torch" in names:
            chosen = "torch"  # not decided eagerly first: the reference traces everywhere
        else:
            chosen = _decide(op, names, args, kwargs)
            _decisions[key] = chosen
    return getattr(_backend(chosen), op)(*args, **kwargs)


def _decide(op: str, names: tuple[str, ...], args, kwargs) -> str:
    reasons: dict[str, list[str]] = {}
    for name in names:
        why = why_not(name, op, *args, **kwargs)
        if not why:
            return name
        reasons[name] = why
    detail = "; ".join(f"{name}: {', '.join(why)}" for name, why in reasons.items())
    raise BackendUnavailable(f"no backend can serve {op} ({detail})")


def backend_for(op: str, *args, **kwargs) -> str:
    """The name of the backend that would serve this call (for tests, logs and benchmarks)."""
    return _decide(op, _candidates(op), args, kwargs)


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    *,
    add: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    silu: bool = False,
) -> torch.Tensor:
    """GroupNorm(x + add) * weight + bias, then * (1 + scale) + shift, then SiLU; see reference.group_norm."""
    return _dispatch(
        "group_norm", x, num_groups, weight, bias, eps, add=add, scale=scale, shift=shift, silu=silu
    )


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v for (B, heads, L, D); see reference.attention."""
    return _dispatch("attention", q, k, v, scale)


def q_sample(
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    noise: torch.Tensor | PhiloxNoise,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, eps): x_t = sqrt(abar[t_i]) x0 + sqrt(1 - abar[t_i]) eps for per-sample timesteps (B,).

    ``noise`` is eps itself, or a PhiloxNoise telling the backend to draw eps (and return it).
    """
    return _dispatch("q_sample", x0, timesteps, alphas_cumprod, noise)


def sampler_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    coeffs: torch.Tensor,
    noise: torch.Tensor | PhiloxNoise | None,
    *,
    kind: str,
    prediction_type: str = "epsilon",
    variance_type: str = "fixed",
    clip_range: float | None = None,
    thresholding: tuple[float, float] | None = None,
    use_clipped_model_output: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step; (x_prev, x0_hat). See reference.sampler_step and step_columns.py."""
    return _dispatch(
        "sampler_step",
        model_output,
        sample,
        coeffs,
        noise,
        kind=kind,
        prediction_type=prediction_type,
        variance_type=variance_type,
        clip_range=clip_range,
        thresholding=thresholding,
        use_clipped_model_output=use_clipped_model_output,
    )


def linear_update(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    state: torch.Tensor,
    matrix: torch.Tensor,
    noise: torch.Tensor | PhiloxNoise | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of a table-driven sampler: (x_next, next state) = the row's matrix times (x,
    model_output, noise, state). See reference.linear_update and the LIN_* columns of step_columns.py."""
    return _dispatch("linear_update", model_output, sample, state, matrix, noise)
