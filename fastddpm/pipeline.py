"""The sampling pipeline: x_T, then U-Net forward + fused sampler step for every reverse step, then images.

The loop keeps no per-step host work the device waits for: the step coefficients come from a table on
the device (ops/step_columns.py), the U-Net's timestep is a view of a device tensor, and which steps draw noise
is known on the host from the table before the loop starts. The sampler state x_t stays float32 whatever
dtype the network runs in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fastddpm.engine.auto_batch import auto_batch_size
from fastddpm.engine.cuda_graph import capture_step
from fastddpm.engine.sampling_loop import SamplingLoop
from fastddpm.ops import noise as noise_module
from fastddpm.ops.noise import randn_tensor
from fastddpm.ops.step_columns import NOISE_ON
from fastddpm.schedulers import DDIMScheduler, DDPMScheduler

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
SAMPLERS = ("ddpm", "ddim")
NOISE_MODES = ("torch", "philox")
OUTPUT_TYPES = ("pil", "np", "pt")
_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """torch.dtype from "fp32" / "bf16" / "fp16" (and their long names) or a torch.dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype {dtype!r} is not one of fp32, bf16, fp16") from None


@dataclass
class PipelineOutput:
    """``images``: a list of PIL images, a float32 NHWC array in [0, 1], or an NCHW tensor in [0, 1].

    ``cuda_graph``: "replayed" (one captured CUDA graph ran every step), "off" (not requested), or
    "fallback: <why>" (requested, the capture failed, and the steps ran eagerly).
    """

    images: Any
    cuda_graph: str = "off"


class Pipeline:
    """A U-Net and its noise schedule; call it to sample images."""

    def __init__(
        self, unet: torch.nn.Module, scheduler_config: dict[str, Any] | None = None, source: str = ""
    ):
        self.unet = unet.eval()
        self.scheduler_config = dict(scheduler_config or {})
        self.scheduler = DDPMScheduler.from_config(self.scheduler_config)
        self.source = source
        self._loops: dict[tuple, tuple[SamplingLoop, Any]] = {}
        self._schedules: dict[tuple, tuple] = {}
        self._compiled = None
        self._memory_format = torch.contiguous_format

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike | None = None, device=None, dtype=None, **overrides
    ) -> Pipeline:
        """Read a diffusers folder, a google/ddpm-* folder, an original DDPM checkpoint or a Hub id."""
        from fastddpm.checkpoints import read_checkpoint

        loaded = read_checkpoint(
            DEFAULT_MODEL_DIR if path is None else path, device=device, dtype=parse_dtype(dtype), **overrides
        )
        return cls(loaded.unet, loaded.scheduler_config, loaded.source)

    @classmethod
    def from_diffusers(cls, obj: Any) -> Pipeline:
        """Wrap a diffusers DDPMPipeline / DDIMPipeline / UNet2DModel in memory, sharing its weights."""
        from fastddpm.models.unet import UNet2D

        unet_model = getattr(obj, "unet", obj)
        if not hasattr(unet_model, "config") or not hasattr(unet_model, "state_dict"):
            raise TypeError(
                f"from_diffusers takes a diffusers pipeline or UNet2DModel, got {type(obj).__name__}"
            )
        scheduler = getattr(obj, "scheduler", None)
        scheduler_config = dict(scheduler.config) if scheduler is not None else {}
        return cls(UNet2D.from_diffusers(unet_model), scheduler_config, f"diffusers {type(obj).__name__}")

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write a diffusers pipeline folder (model_index.json, unet/, scheduler/)."""
        from fastddpm.checkpoints import save_diffusers

        save_diffusers(self.unet, self.scheduler_config, folder)

    # ------------------------------------------------------------------------------------- properties
    @property
    def config(self) -> dict[str, Any]:
        return self.unet.config

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device=None, dtype=None) -> Pipeline:
        """Move the network (and cast it: "fp32" / "bf16" / "fp16"); the sampler state stays float32."""
        self.unet.to(device=device, dtype=parse_dtype(dtype))
        self._loops.clear()
        self._compiled = None
        return self

    def sample_shape(self) -> tuple[int, int, int]:
        size = self.config["sample_size"]
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (self.config["in_channels"], height, width)

    def make_scheduler(self, sampler: str) -> DDPMScheduler | DDIMScheduler:
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
        cls = DDPMScheduler if sampler == "ddpm" else DDIMScheduler
        return cls.from_config(self.scheduler_config)

    # ---------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def __call__(
        self,
        batch_size: int | str = 1,
        num_inference_steps: int | None = None,
        sampler: str = "ddpm",
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        seed: int | None = None,
        noise: str = "torch",
        output_type: str = "pil",
        progress: bool = True,
        sample_offset: int = 0,
        use_clipped_model_output: bool = False,
        use_cuda_graph: bool | None = None,
        compile: bool = False,
        channels_last: bool | None = None,
        return_dict: bool = True,
    ) -> PipelineOutput | tuple:
        """Sample ``batch_size`` images.

        noise="torch" draws x_T and every step's noise from ``generator`` (or a CPU generator seeded with
        ``seed``) exactly as diffusers' DDPMPipeline / DDIMPipeline do, so the images match theirs.
        noise="philox" makes image b depend only on (seed, sample_offset + b, settings): the same images for
        any batch size, device or process split. Default steps: num_train_timesteps for ddpm, 50 for ddim.
        batch_size="auto" (CUDA) picks the largest batch that fits in free memory (auto_batch.py).
        use_cuda_graph (default: on CUDA) replays one captured graph of U-Net + sampler step for every step;
        compile=True runs the U-Net through torch.compile (on the CPU its convolutions then go through
        nn.Conv2d as inductor sees them, not fastddpm.models.conv's Winograd path, which eager mode uses).
        channels_last (default: prefer_channels_last) runs the network on NHWC activations and weights.
        """
        if batch_size == "auto":
            batch_size = auto_batch_size(self.unet, self.sample_shape(), self.dtype)
        self._check_call(
            batch_size, num_inference_steps, sampler, eta, noise, output_type, seed, sample_offset
        )
        device = self.device
        scheduler, timesteps_host, noise_on, table, timesteps = self._schedule_for(
            sampler, num_inference_steps, float(eta), device
        )
        shape = (batch_size, *self.sample_shape())

        if noise == "torch" and generator is None and seed is not None:
            generator = torch.Generator("cpu").manual_seed(seed)
        if noise == "philox":
            seed = 0 if seed is None else seed
            x = noise_module.philox_normal(seed, sample_offset, batch_size, shape[1:], 0, device=device)
        else:
            x = randn_tensor(shape, generator, device, torch.float32)

        step_options = self._step_options(scheduler, sampler, use_clipped_model_output)
        self._use_memory_format(
            torch.channels_last
            if (prefer_channels_last(device) if channels_last is None else channels_last)
            else None
        )
        philox_seed = seed if noise == "philox" else None  # torch-mode noise is copied in, not baked in
        key = (
            shape,
            self.dtype,
            sampler,
            tuple(timesteps_host),
            float(eta),
            noise,
            philox_seed,
            repr(step_options),
        )
        loop, replay, graph_status = self._loop_for(
            key, table, timesteps, shape, step_options, noise, seed, use_cuda_graph, compile
        )
        draw = None
        if noise == "torch":
            draw = lambda: randn_tensor(shape, generator, device, torch.float32)  # noqa: E731
        with tqdm(total=len(noise_on), disable=not progress, desc=f"fastddpm {sampler}", leave=False) as bar:
            x = loop.run(x, sample_offset, noise_on, draw, step=replay, progress=bar).clone()

        images = to_output(x, output_type)
        return PipelineOutput(images, graph_status) if return_dict else (images,)

    def _schedule_for(self, sampler: str, steps: int | None, eta: float, device: torch.device):
        """The scheduler, timesteps, noise flags and device step table for these settings, built once:
        a 1000-step DDPM table takes ~0.2 s of host work, which the CLI would otherwise pay per batch."""
        key = (sampler, steps, eta, device, repr(sorted(self.scheduler_config.items())))
        if key not in self._schedules:
            scheduler = self.make_scheduler(sampler)
            if steps is None:
                steps = scheduler.config.num_train_timesteps if sampler == "ddpm" else 50
            scheduler.set_timesteps(steps)
            table_host = scheduler.step_table(eta=eta) if sampler == "ddim" else scheduler.step_table()
            self._schedules.clear()  # the settings of the latest call only: a run keeps them fixed
            self._schedules[key] = (
                scheduler,
                scheduler.timesteps.tolist(),
                (table_host[:, NOISE_ON] > 0).tolist(),
                table_host.to(device),
                scheduler.timesteps.to(device),
            )
        return self._schedules[key]

    def _loop_for(self, key, table, timesteps, shape, step_options, noise, seed, use_cuda_graph, compile):
        """The cached SamplingLoop, its graph replay (None: eager) and PipelineOutput.cuda_graph's value."""
        on_cuda = table.device.type == "cuda"
        if use_cuda_graph is None:
            use_cuda_graph = on_cuda
        if use_cuda_graph and not on_cuda:
            raise ValueError("use_cuda_graph=True needs the pipeline on a CUDA device")
        key = (*key, bool(use_cuda_graph), bool(compile), self._memory_format)
        if key not in self._loops:
            unet = self.unet
            if compile:
                # one eager forward first: ops decides each call's backend eagerly, compile looks it up
                self.unet(
                    torch.zeros(shape, dtype=self.dtype, device=table.device), timesteps[:1].expand(shape[0])
                )
                unet = self._compiled_unet()
            loop = SamplingLoop(
                unet, table, timesteps, shape, self.dtype, step_options, noise, seed or 0, self._memory_format
            )
            replay, status = None, "off"
            if use_cuda_graph:
                buffers = [loop.x, loop.step_index, loop.sample_offset]
                capture = capture_step(loop.step, buffers + ([loop.noise] if loop.noise is not None else []))
                replay = capture.replay
                status = "replayed" if replay is not None else f"fallback: {capture.fallback}"
            self._loops.clear()  # one live graph at a time: each holds a private memory pool
            self._loops[key] = (loop, replay, status)
        return self._loops[key]

    def _use_memory_format(self, memory_format: torch.memory_format | None) -> None:
        """Convert the network's weights once to NHWC (channels_last) or back to NCHW."""
        memory_format = memory_format or torch.contiguous_format
        if memory_format != self._memory_format:
            self.unet.to(memory_format=memory_format)
            self._memory_format = memory_format
            self._compiled = None

    def _compiled_unet(self):
        if self._compiled is None:
            self._compiled = torch.compile(self.unet, fullgraph=True, dynamic=False)
        return self._compiled

    def _step_options(self, scheduler, sampler: str, use_clipped_model_output: bool) -> dict[str, Any]:
        options = {
            "kind": sampler,
            "prediction_type": scheduler.config.prediction_type,
            **scheduler._clip_options(),
        }
        if sampler == "ddpm":
            options["variance_type"] = scheduler.variance_mode()
            out_channels = self.config.get("out_channels", self.config["in_channels"])
            if options["variance_type"] != "fixed" and out_channels != 2 * self.config["in_channels"]:
                raise ValueError(
                    f"variance_type {scheduler.variance_type!r} needs a U-Net with 2 x in_channels output "
                    f"channels, this one has {out_channels}"
                )
        else:
            options["variance_type"] = "fixed"
            options["use_clipped_model_output"] = bool(use_clipped_model_output)
        return options

    def _check_call(self, batch_size, steps, sampler, eta, noise, output_type, seed, sample_offset) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
        train_steps = self.scheduler.config.num_train_timesteps
        if steps is not None and not (isinstance(steps, int) and 1 <= steps <= train_steps):
            raise ValueError(f"num_inference_steps must be an integer in [1, {train_steps}], got {steps!r}")
        if not 0.0 <= float(eta):
            raise ValueError(f"eta must be >= 0, got {eta!r}")
        if noise not in NOISE_MODES:
            raise ValueError(f"noise {noise!r} is not one of {', '.join(NOISE_MODES)}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")
        if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**63):
            raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        if not (isinstance(sample_offset, int) and 0 <= sample_offset < 2**32 - batch_size):
            raise ValueError(
                f"sample_offset must be an integer in [0, 2**32 - batch_size), got {sample_offset!r}"
            )


def prefer_channels_last(device: torch.device) -> bool:
    """NHWC by default. CPU, measured (cifar10-32 U-Net forward, float32, 2 threads, median of 12 runs,
    interleaved): batch 1: NCHW 134.7 ms, NHWC 108.3 ms (diffusers 167.3 ms); batch 8: NCHW 748 ms, NHWC
    688 ms (diffusers 779 ms) -- oneDNN skips its per-conv layout reorders. CUDA: cuDNN's tensor-core
    convolutions take NHWC natively (not measured here: no GPU was lent so far)."""
    return device.type in ("cpu", "cuda")


def to_output(x: torch.Tensor, output_type: str):
    """[-1, 1] NCHW samples to diffusers' outputs: "pt" NCHW [0, 1], "np" NHWC float32, "pil" images."""
    image = (x / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return image
    array = image.cpu().permute(0, 2, 3, 1).float().numpy()
    if output_type == "np":
        return array
    return numpy_to_pil(array)


def numpy_to_pil(images: np.ndarray) -> list:
    """float NHWC in [0, 1] to PIL images, rounding as diffusers does (grayscale for one channel)."""
    from PIL import Image

    pixels = (images * 255).round().astype("uint8")
    if pixels.shape[-1] == 1:
        return [Image.fromarray(p.squeeze(-1)) for p in pixels]  # 2-D uint8: mode "L"
    return [Image.fromarray(p) for p in pixels]


def load(path: str | os.PathLike | None = None, device=None, dtype=None, **overrides) -> Pipeline:
    """A Pipeline from a checkpoint: a diffusers folder, a google/ddpm-* folder, an original DDPM .ckpt /
    .pth / .pt, or a Hub id; None gives the built-in digits model."""
    return Pipeline.from_pretrained(path, device=device, dtype=dtype, **overrides)
