"""Reading checkpoint files safely: JSON configs, safetensors, and pickles through torch.load(weights_only=True).

Every failure is a CheckpointError whose one-sentence message names the file and the problem.
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

PICKLE_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin")


class CheckpointError(ValueError):
    """A checkpoint cannot be read: the message names the file and the problem in one sentence."""


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing {what}")
    return path


def read_json(path: Path, what: str) -> dict[str, Any]:
    require_file(path, what)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: {what} is not readable JSON ({_reason(exc)})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} must hold a JSON object, not {type(data).__name__}")
    return data


def load_pickle(path: Path) -> Any:
    """torch.load with weights_only=True (tensors and plain containers only), onto the CPU."""
    require_file(path, "checkpoint file")
    try:
        with warnings.catch_warnings():
            # torch's two-line advice on a plain pickle's protocol (to file an issue with torch) would come
            # before the one line that says whether the file is read or refused
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global that is not a tensor type or a plain container: such a file would
        # run code when unpickled, so it is rejected before anything in it is executed.
        raise CheckpointError(
            f"{path}: refused to unpickle, the file holds objects other than tensors (unpickling it could run code)"
        ) from exc
    except Exception as exc:  # corrupt zip, truncated file, not a torch file at all
        raise CheckpointError(f"{path}: unreadable or corrupt checkpoint ({_reason(exc)})") from exc


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    require_file(path, "weights file")
    try:
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable or corrupt safetensors file ({_reason(exc)})") from exc


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a .safetensors file or a pickled state dict."""
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    state = load_pickle(path)
    return as_state_dict(state, path)


def as_state_dict(state: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    bad = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} entries are not tensors (e.g. {', '.join(bad[:3])})")
    return dict(state)


def find_weights(folder: Path, stem: str = "diffusion_pytorch_model") -> Path:
    """The weights file of a diffusers model folder: safetensors preferred (as diffusers does), then .bin."""
    for suffix in (".safetensors", ".bin"):
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        return index
    raise CheckpointError(f"{folder}: missing weights ({stem}.safetensors or {stem}.bin)")


def load_folder_weights(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a file found by find_weights; a sharded .index.json is read shard by shard."""
    if path.name.endswith(".index.json"):
        weight_map = read_json(path, "weights index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{path}: weights index has no weight_map")
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(load_weights(path.parent / shard))
        return state
    return load_weights(path)


def check_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: tensor {name} holds NaN or inf values")


def fitted_tensors(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    path: Path,
    what: str,
    device,
    dtype,
) -> dict[str, torch.Tensor]:
    """The state's tensors on ``device`` in ``dtype`` (default CPU, float32) once its names and shapes are
    exactly ``expected`` (else one CheckpointError naming the first few of each mismatch) and all finite."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(n for n in set(expected) & set(state) if tuple(state[n].shape) != expected[n])
    if missing or unexpected or misshaped:
        raise CheckpointError(
            f"{path}: {what} weights do not fit the flags: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"mis-shaped {misshaped[:3]}"
        )
    check_finite(state, path)
    return {n: t.to(device=device or "cpu", dtype=dtype or torch.float32) for n, t in state.items()}


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
