"""Where a call's randomness comes from: x_T, the per-step noise and drawn class labels, in one place.

noise="torch" draws from a torch.Generator (one, a list of one per image, or the global one) in the order
diffusers' and OpenAI's pipelines draw: class labels first, then x_T, then one normal before each step that
draws (the plan's ``noise_draws``). noise="philox" keys every draw by (seed, sample index, stream): x_T is
stream 0, step i's noise stream i + 1 (drawn inside the fused update, so the loop copies nothing per step),
class labels their own stream; image b of a batch has sample index ``sample_offset + b``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastddpm import ops
from fastddpm.ops import noise as noise_module
from fastddpm.ops.noise import randn_tensor

NOISE_MODES = ("torch", "philox")


@dataclass
class NoiseSource:
    mode: str  # "torch" or "philox"
    generator: torch.Generator | list[torch.Generator] | None = None
    seed: int = 0

    @classmethod
    def for_call(cls, mode: str, generator, seed: int | None) -> NoiseSource:
        """Philox with ``seed`` (0 when None); torch with ``generator``, or a CPU generator seeded with
        ``seed`` when only a seed is given."""
        if mode not in NOISE_MODES:
            raise ValueError(f"noise {mode!r} is not one of {', '.join(NOISE_MODES)}")
        if mode == "philox":
            return cls(mode, None, 0 if seed is None else seed)
        if generator is None and seed is not None:
            generator = torch.Generator("cpu").manual_seed(seed)
        return cls(mode, generator)

    @property
    def philox(self) -> bool:
        return self.mode == "philox"

    def initial(self, shape: tuple[int, ...], sample_offset: int, device: torch.device) -> torch.Tensor:
        """x_T: float32 N(0, I) of the batch's shape."""
        if self.philox:
            return noise_module.philox_normal(self.seed, sample_offset, shape[0], shape[1:], 0, device=device)
        return randn_tensor(shape, self.generator, device, torch.float32)

    def host_draws(self, shape: tuple[int, ...], device: torch.device) -> Callable[[], torch.Tensor]:
        """draw() -> the next step's noise from the generator (torch mode; Philox draws inside the update)."""
        return functools.partial(randn_tensor, shape, self.generator, device, torch.float32)

    def step_noise(
        self, sample_offset: int | torch.Tensor, step_index: int | torch.Tensor
    ) -> ops.PhiloxNoise:
        """Step ``step_index``'s Philox noise, drawn where the fused update uses it (stream index + 1)."""
        return ops.PhiloxNoise(self.seed, sample_offset, step_index + 1)

    def step_normal(self, shape, sample_offset: int, step_index: int, device) -> torch.Tensor:
        """Step ``step_index``'s Philox noise as a tensor, for the eager loop's ``variance_noise``."""
        return noise_module.philox_normal(
            self.seed, sample_offset, shape[0], shape[1:], step_index + 1, device=device
        )

    def class_labels(
        self, batch_size: int, classes: int, sample_offset: int, device: torch.device
    ) -> torch.Tensor:
        """Uniform labels in [0, classes), drawn before x_T as OpenAI's image_sample.py draws them."""
        if self.philox:
            return noise_module.philox_class_labels(self.seed, sample_offset, batch_size, classes, device)
        gens = (
            self.generator
            if isinstance(self.generator, list)
            else [self.generator] * (self.generator is not None)
        )
        if len(gens) > 1:
            draws = [torch.randint(0, classes, (1,), generator=g, device=g.device) for g in gens]
            return torch.cat(draws).to(device)
        gen_device = gens[0].device if gens else device
        return torch.randint(
            0, classes, (batch_size,), generator=gens[0] if gens else None, device=gen_device
        ).to(device)
