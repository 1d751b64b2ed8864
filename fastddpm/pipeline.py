"""The sampling pipeline: x_T, then U-Net forward + fused sampler step for every reverse step, then images.

The loop keeps no per-step host work the device waits for: the step coefficients come from a table on
the device (kernels/step_columns.py), the U-Net's timestep is a view of a device tensor, and which steps draw noise
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
from fastddpm.engine.multistep_loop import MultistepLoop
from fastddpm.engine.sampling_loop import SamplingLoop
from fastddpm.engine.scheduler_loop import run_scheduler_loop
from fastddpm.kernels.step_columns import NOISE_ON
from fastddpm.models.adm_epsilon import AdmEpsilonNet
from fastddpm.ops import noise as noise_module
from fastddpm.ops.noise import randn_tensor
from fastddpm.schedulers import DDPMScheduler, samplers
from fastddpm.schedulers.gaussian_diffusion import GaussianDiffusion

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
SAMPLERS = samplers.NAMES
# the samplers of SamplingLoop; the others run in MultistepLoop (or, not linear, eagerly in scheduler_loop)
GRAPHED_SAMPLERS = ("ddpm", "ddim")
DEFAULT_FAST_SAMPLER_STEPS = 50  # as diffusers' DDIMPipeline; the multistep solvers do well with 10-25
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


def check_device(device: str | torch.device | None) -> torch.device | None:
    """torch.device(device), or a one-line ValueError naming it when torch cannot parse it or this machine has
    no such CUDA device (instead of torch's driver error from deep inside the U-Net build)."""
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device name torch knows (cpu, cuda, cuda:K)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} is not available: torch sees no CUDA GPU here (use device='cpu')"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"device {device!r} is not available: torch sees {count} CUDA GPU(s) here")
    return parsed


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
        adm = self.scheduler_config.get("_class_name") == "GaussianDiffusion"  # ADM's own process
        self.scheduler = (GaussianDiffusion if adm else DDPMScheduler).from_config(self.scheduler_config)
        self.source = source
        self._loops: dict[tuple, tuple[SamplingLoop, Any]] = {}
        self._schedules: dict[tuple, tuple] = {}
        self._compiled = None
        self._memory_format = torch.contiguous_format
        self._adm_net: AdmEpsilonNet | None = None  # built on an ADM checkpoint's first fast-sampler call

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike | None = None, device=None, dtype=None, **overrides
    ) -> Pipeline:
        """Read a diffusers folder, a google/ddpm-* folder, an original DDPM checkpoint or a Hub id."""
        from fastddpm.checkpoints import read_checkpoint

        loaded = read_checkpoint(
            DEFAULT_MODEL_DIR if path is None else path,
            device=check_device(device),
            dtype=parse_dtype(dtype),
            **overrides,
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
        self.unet.to(device=check_device(device), dtype=parse_dtype(dtype))
        self._loops.clear()
        self._compiled = None
        return self

    def sample_shape(self) -> tuple[int, int, int]:
        size = self.config["sample_size"]
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (self.config["in_channels"], height, width)

    def make_scheduler(self, sampler: str, config: dict[str, Any] | None = None, karras: bool = False):
        """The scheduler a sampler name stands for, from the checkpoint's (or the given) scheduler config;
        for an ADM checkpoint, from the diffusers-style config of its process (GaussianDiffusion)."""
        if config is None:
            adm = isinstance(self.scheduler, GaussianDiffusion)
            config = self.scheduler.scheduler_config() if adm else self.scheduler_config
        return samplers.make(sampler, config, karras)

    # ---------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def __call__(
        self,
        batch_size: int | str = 1,
        num_inference_steps: int | None = None,
        sampler: str | Any | None = None,
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
        timestep_respacing: str | int | None = None,
        class_labels: torch.Tensor | list[int] | None = None,
        latents: torch.Tensor | None = None,
        karras: bool = False,
    ) -> PipelineOutput | tuple:
        """Sample ``batch_size`` images.

        sampler: a name (ddpm, ddim, pndm, dpm++2m, dpm++3m, dpm++2m-sde, unipc, euler, euler-a, heun, deis;
        built from the checkpoint's scheduler config, with Karras sigmas when ``karras``), a fastddpm
        scheduler instance, or None: ``pipe.scheduler`` (a DDPMScheduler of the checkpoint's config unless
        replaced, e.g. ``pipe.scheduler = fastddpm.UniPCMultistepScheduler.from_config(pipe.scheduler.config)``).
        Every sampler runs in a graphed, sync-free loop (the others than DDPM / DDIM from a step table);
        configs whose step is not linear (dynamic thresholding) run diffusers' loop eagerly.

        noise="torch" draws x_T and every step's noise from ``generator`` (or a CPU generator seeded with
        ``seed``) exactly as diffusers' DDPMPipeline / DDIMPipeline do, so the images match theirs.
        noise="philox" makes image b depend only on (seed, sample_offset + b, settings): the same images for
        any batch size, device or process split. Default steps: num_train_timesteps for ddpm, 50 for ddim.
        batch_size="auto" (CUDA) picks the largest batch that fits in free memory (auto_batch.py).
        use_cuda_graph (default: on CUDA) replays one captured graph of U-Net + sampler step for every step;
        compile=True runs the U-Net through torch.compile (on the CPU its convolutions then go through
        nn.Conv2d as inductor sees them, not fastddpm.models.conv's Winograd path, which eager mode uses).
        channels_last (default: prefer_channels_last) runs the network on NHWC activations and weights.

        ADM checkpoints (OpenAI improved-/guided-diffusion) sample as their p_sample_loop (sampler="ddpm",
        learned or fixed variances) or ddim_sample_loop (sampler="ddim", eta) over the process respaced by
        ``timestep_respacing`` (their syntax: "250", "10,15,20", "ddim25"; default: the load flags', or
        str(num_inference_steps)); noise="torch" draws one normal per step, the last included, as they do.
        The fast sampler names run on their epsilon (x0 with predict_xstart) channels over all
        diffusion_steps (karras=True too), with a diffusers-style config of the same betas.
        ``class_labels`` (tensor or list, one per image) for class-conditional models; None draws uniform
        labels from the generator before x_T (as their image_sample.py), or from Philox. ``latents`` is
        x_T (float32, the batch's shape): then the generator's first draw is the first step's noise.
        """
        if batch_size == "auto":
            batch_size = auto_batch_size(self.unet, self.sample_shape(), self.dtype)
        scheduler_config = None
        if isinstance(self.scheduler, GaussianDiffusion):
            # ADM's own process: their p_sample_loop (ddpm) or ddim_sample_loop (ddim), as load configured it;
            # a fast sampler name runs on its epsilon (x0) channels (_call_scheduler)
            sampler = "ddpm" if sampler is None else sampler
            if not isinstance(sampler, str):
                raise ValueError("sampler: ADM checkpoints take a sampler name, not a scheduler instance")
            if sampler not in GRAPHED_SAMPLERS and sampler in SAMPLERS:
                if latents is not None or timestep_respacing is not None:
                    raise ValueError(
                        "latents and timestep_respacing apply to the ddpm and ddim samplers only"
                    )
                instance = self.make_scheduler(sampler, karras=karras)
                return self._call_scheduler(
                    instance, batch_size, num_inference_steps, generator, seed, noise, output_type, progress,
                    sample_offset, return_dict, use_cuda_graph, class_labels, compile, channels_last,
                )  # fmt: skip
        if sampler is None:
            sampler = self.scheduler
        graphed = sampler in GRAPHED_SAMPLERS or getattr(sampler, "kind", None) in GRAPHED_SAMPLERS
        if not graphed and (
            class_labels is not None or latents is not None or timestep_respacing is not None
        ):
            raise ValueError(
                "class_labels, latents and timestep_respacing apply to the ddpm and ddim samplers only"
            )
        if not isinstance(sampler, str):
            instance = sampler
            sampler = getattr(instance, "kind", None)
            if sampler not in GRAPHED_SAMPLERS:
                return self._call_scheduler(
                    instance, batch_size, num_inference_steps, generator, seed, noise, output_type, progress,
                    sample_offset, return_dict, use_cuda_graph, None, compile, channels_last,
                )  # fmt: skip
            if karras:
                raise ValueError(
                    "karras=True applies to sampler names; this scheduler instance has its own config"
                )
            scheduler_config = {k: v for k, v in instance.config.items() if not k.startswith("_")}
        elif sampler not in GRAPHED_SAMPLERS and sampler in SAMPLERS:
            instance = self.make_scheduler(sampler, karras=karras)
            return self._call_scheduler(
                instance, batch_size, num_inference_steps, generator, seed, noise, output_type, progress,
                sample_offset, return_dict, use_cuda_graph, None, compile, channels_last,
            )  # fmt: skip
        elif karras and sampler in GRAPHED_SAMPLERS:
            raise ValueError(
                f"sampler {sampler!r} has no Karras sigmas (karras=True needs one of: {samplers.karras_names()})"
            )
        self._check_call(
            batch_size, num_inference_steps, sampler, eta, noise, output_type, seed, sample_offset
        )
        device = self.device
        scheduler, timesteps_host, noise_on, table, timesteps = self._schedule_for(
            sampler, num_inference_steps, float(eta), device, timestep_respacing, scheduler_config
        )
        shape = (batch_size, *self.sample_shape())

        if noise == "torch" and generator is None and seed is not None:
            generator = torch.Generator("cpu").manual_seed(seed)
        if noise == "philox":
            seed = 0 if seed is None else seed
        labels = self._class_labels(class_labels, batch_size, generator, noise, seed, sample_offset, device)
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have the batch's shape {shape}, got {tuple(latents.shape)}")
            x = latents.to(device=device, dtype=torch.float32)
        elif noise == "philox":
            x = noise_module.philox_normal(seed, sample_offset, batch_size, shape[1:], 0, device=device)
        else:
            x = randn_tensor(shape, generator, device, torch.float32)

        step_options = self._step_options(scheduler, sampler, use_clipped_model_output)
        self._use_memory_format(self._memory_format_for(device, channels_last))
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
            key,
            table,
            timesteps,
            shape,
            step_options,
            noise,
            seed,
            use_cuda_graph,
            compile,
            labels is not None,
        )
        draw = None
        if noise == "torch":
            draw = lambda: randn_tensor(shape, generator, device, torch.float32)  # noqa: E731
        with tqdm(total=len(noise_on), disable=not progress, desc=f"fastddpm {sampler}", leave=False) as bar:
            x = loop.run(
                x, sample_offset, noise_on, draw, step=replay, progress=bar, class_labels=labels
            ).clone()

        images = to_output(x, output_type)
        return PipelineOutput(images, graph_status) if return_dict else (images,)

    def _schedule_for(
        self, sampler: str, steps: int | None, eta: float, device: torch.device, respacing=None, config=None
    ):
        """The scheduler, timesteps, noise flags and device step table for these settings, built once:
        a 1000-step DDPM table takes ~0.2 s of host work, which the CLI would otherwise pay per batch."""
        config = self.scheduler_config if config is None else config
        key = (sampler, steps, eta, device, respacing, repr(sorted(config.items())))
        if isinstance(self.scheduler, GaussianDiffusion) and key not in self._schedules:
            if respacing is None and steps is not None:
                respacing = str(steps)
            model_t, table_host = self.scheduler.schedule(sampler, respacing, eta)
            self._schedules.clear()
            # their samplers draw a normal at every step (the last one's is multiplied by 0)
            draws = (
                [True] * len(model_t)
                if self.scheduler.draws_every_step
                else (table_host[:, NOISE_ON] > 0).tolist()
            )
            self._schedules[key] = (
                self.scheduler,
                model_t.tolist(),
                draws,
                table_host.to(device),
                model_t.to(device),
            )
        elif respacing is not None and not isinstance(self.scheduler, GaussianDiffusion):
            raise ValueError("timestep_respacing applies to ADM checkpoints only; use num_inference_steps")
        if key not in self._schedules:
            scheduler = self.make_scheduler(sampler, config)
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

    def _call_scheduler(
        self,
        scheduler,
        batch_size,
        steps,
        generator,
        seed,
        noise,
        output_type,
        progress,
        sample_offset,
        return_dict,
        use_cuda_graph=None,
        class_labels=None,
        compile=False,
        channels_last=None,
    ):
        """Any other scheduler: in the table-driven loop (engine/multistep_loop.py) where its config is
        linear (``graph_refusal`` says why not), else in diffusers' loop, eagerly (engine/scheduler_loop.py).
        An ADM net runs through AdmEpsilonNet, its class labels drawn before x_T as ddpm / ddim draw them."""
        name = type(scheduler).__name__
        if not hasattr(scheduler, "set_timesteps") or not hasattr(scheduler, "step"):
            raise TypeError(f"sampler must be a name or a scheduler with set_timesteps and step, got {name}")
        self._check_call(batch_size, steps, "ddim", 0.0, noise, output_type, seed, sample_offset)
        device = self.device
        scheduler.set_timesteps(DEFAULT_FAST_SAMPLER_STEPS if steps is None else steps, device=device)
        shape = (batch_size, *self.sample_shape())
        philox_noise = None
        if noise == "philox":
            seed = 0 if seed is None else seed
        elif generator is None and seed is not None:
            generator = torch.Generator("cpu").manual_seed(seed)
        net = self._adm_epsilon_net(class_labels, batch_size, generator, noise, seed, sample_offset, device)
        self._use_memory_format(self._memory_format_for(device, channels_last))
        if noise == "philox":
            x = noise_module.philox_normal(seed, sample_offset, batch_size, shape[1:], 0, device=device)
            # step i's noise: Philox stream i + 1, as the graphed loop's steps use
            philox_noise = (
                lambda i: noise_module.philox_normal(  # noqa: E731
                    seed, sample_offset, batch_size, shape[1:], i + 1, device=device
                )
            )
        else:
            x = randn_tensor(shape, generator, device, torch.float32)
        total = len(scheduler.timesteps)
        refusal = scheduler.graph_refusal() if hasattr(scheduler, "linear_table") else "no step table"
        table_driven = refusal is None
        with tqdm(total=total, disable=not progress, desc=f"fastddpm {name}", leave=False) as bar:
            if table_driven:
                x, status = self._run_multistep(
                    scheduler, x, shape, noise, seed, sample_offset, generator, use_cuda_graph, bar, net,
                    compile,
                )  # fmt: skip
            else:
                if compile:
                    net = self._network(net, compile, shape, scheduler.timesteps.to(device))
                x = run_scheduler_loop(net, scheduler, x, self.dtype, generator, philox_noise, progress=bar)
                wanted = use_cuda_graph if use_cuda_graph is not None else device.type == "cuda"
                # a graph was asked for (or is the CUDA default) but this config has no step table
                status = f"fallback: {name} runs diffusers' loop eagerly ({refusal})" if wanted else "off"
        images = to_output(x, output_type)
        return PipelineOutput(images, status) if return_dict else (images,)

    def _run_multistep(
        self, scheduler, x_T, shape, noise, seed, sample_offset, generator, use_cuda_graph, bar, net, compile
    ):
        """A schedule in the table-driven, sync-free MultistepLoop (graphed on CUDA)."""
        device = self.device
        noise_mode = noise if scheduler.noise_every_step else None
        table = scheduler.linear_table().to(device)
        timesteps = scheduler.timesteps.to(device)

        def build():
            network = self._network(net, compile, shape, timesteps)
            return MultistepLoop(
                network, table, timesteps, shape, self.dtype, noise_mode, seed or 0, self._memory_format,
                mean_channels_only=scheduler.mean_channels_only,
            )  # fmt: skip

        key = ("multistep", shape, self.dtype, table.cpu().numpy().tobytes(), tuple(timesteps.tolist()),
               noise_mode, seed if noise_mode == "philox" else None, bool(compile),
               scheduler.mean_channels_only)  # fmt: skip
        loop, replay, status = self._cached_loop(key, device, use_cuda_graph, build)
        draw = None
        if noise_mode == "torch":
            draw = lambda: randn_tensor(shape, generator, device, torch.float32)  # noqa: E731
        x_T = x_T * scheduler.init_noise_sigma
        return loop.run(x_T, sample_offset, len(timesteps), draw, step=replay, progress=bar).clone(), status

    def _loop_for(
        self, key, table, timesteps, shape, step_options, noise, seed, use_cuda_graph, compile, labeled=False
    ):
        """The cached SamplingLoop, its graph replay (None: eager) and PipelineOutput.cuda_graph's value."""

        def build():
            unet = self._network(self.unet, compile, shape, timesteps, labeled)
            return SamplingLoop(
                unet, table, timesteps, shape, self.dtype, step_options, noise, seed or 0, self._memory_format,
                class_conditional=labeled,
            )  # fmt: skip

        return self._cached_loop((*key, bool(compile)), table.device, use_cuda_graph, build)

    def _cached_loop(self, key, device: torch.device, use_cuda_graph: bool | None, build):
        """(loop, graph replay or None, PipelineOutput.cuda_graph's value) for ``key``: built by ``build()``
        and, when a graph is used (the CUDA default), captured once; reused while the settings repeat."""
        on_cuda = device.type == "cuda"
        if use_cuda_graph is None:
            use_cuda_graph = on_cuda
        if use_cuda_graph and not on_cuda:
            raise ValueError("use_cuda_graph=True needs the pipeline on a CUDA device")
        key = (*key, bool(use_cuda_graph), self._memory_format)
        if key not in self._loops:
            loop = build()
            replay, status = None, "off"
            if use_cuda_graph:
                capture = capture_step(loop.step, loop.buffers())
                replay, status = capture.replay, capture.status
            self._loops.clear()  # one live graph at a time: each holds a private memory pool
            self._loops[key] = (loop, replay, status)
        return self._loops[key]

    def _network(self, net, compile: bool, shape, timesteps, labeled: bool = False):
        """``net``, or with ``compile`` the compiled U-Net after one eager forward (ops decides each call's
        backend eagerly; compile looks it up)."""
        if not compile:
            return net
        if net is not self.unet:
            raise ValueError("compile=True is not supported for the fast samplers on ADM checkpoints")
        device = timesteps.device
        labels = torch.zeros(shape[0], dtype=torch.int64, device=device) if labeled else None
        self.unet(
            torch.zeros(shape, dtype=self.dtype, device=device).contiguous(memory_format=self._memory_format),
            timesteps[:1].expand(shape[0]),
            **({"class_labels": labels} if labeled else {}),
        )
        return self._compiled_unet()

    def _adm_epsilon_net(self, labels, batch_size, generator, noise, seed, sample_offset, device):
        """The network the fast samplers' loops call: the U-Net itself, or for an ADM checkpoint one
        AdmEpsilonNet per pipeline (cached loops and graphs keep calling it) holding this batch's labels."""
        if not isinstance(self.scheduler, GaussianDiffusion):
            return self.unet  # __call__ refused class_labels for it
        labels = self._class_labels(labels, batch_size, generator, noise, seed, sample_offset, device)
        if self._adm_net is None or self._adm_net.unet is not self.unet:
            scale = self.scheduler.model_timestep_scale()
            self._adm_net = AdmEpsilonNet(self.unet, scale, self.config["in_channels"])
        self._adm_net.set_class_labels(labels)
        return self._adm_net

    @staticmethod
    def _memory_format_for(device: torch.device, channels_last: bool | None) -> torch.memory_format | None:
        wanted = prefer_channels_last(device) if channels_last is None else channels_last
        return torch.channels_last if wanted else None

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

    def _class_labels(self, labels, batch_size, generator, noise, seed, sample_offset, device):
        """The batch's class labels (B,) int64 on ``device``, or None for an unconditional net."""
        classes = self._num_classes()
        if classes is None:
            if labels is not None:
                raise ValueError("class_labels was given but this model is not class-conditional")
            return None
        if labels is None:
            if noise == "philox":
                return noise_module.philox_class_labels(seed, sample_offset, batch_size, classes, device)
            gens = (
                generator
                if isinstance(generator, list)
                else [generator] * (1 if generator is not None else 0)
            )
            if len(gens) > 1:
                return torch.cat(
                    [torch.randint(0, classes, (1,), generator=g, device=g.device) for g in gens]
                ).to(device)
            gen_device = gens[0].device if gens else device
            return torch.randint(
                0, classes, (batch_size,), generator=gens[0] if gens else None, device=gen_device
            ).to(device)
        labels = torch.as_tensor(labels)
        if (
            labels.dtype.is_floating_point
            or labels.dtype == torch.bool
            or tuple(labels.shape) != (batch_size,)
        ):
            raise ValueError(
                f"class_labels must be {batch_size} integers (one per image), got {tuple(labels.shape)} {labels.dtype}"
            )
        if bool(((labels < 0) | (labels >= classes)).any()):
            raise ValueError(f"class_labels must lie in [0, {classes})")
        return labels.to(device=device, dtype=torch.int64)

    def _num_classes(self) -> int | None:
        embedding = getattr(self.unet, "label_emb", None) or getattr(self.unet, "class_embedding", None)
        return embedding.num_embeddings if embedding is not None else None

    def _step_options(self, scheduler, sampler: str, use_clipped_model_output: bool) -> dict[str, Any]:
        if isinstance(scheduler, GaussianDiffusion):
            return scheduler.step_options(sampler)
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
        train_steps = len(self.scheduler)
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
    .pth / .pt, an OpenAI ADM .pt (improved-/guided-diffusion) with their README's flags as keyword
    arguments (``num_channels=256, learn_sigma=True, ...``), or a Hub id; None gives the built-in digits
    model.

    device: None (the CPU), "cpu", "cuda" (the current GPU), "cuda:K", or a torch.device; a CUDA device this
    machine lacks is a ValueError naming it.
    dtype of the network (the sampler state stays float32): None (float32), "fp32" / "float32", "bf16" /
    "bfloat16", "fp16" / "float16" / "half", or torch.float32 / torch.bfloat16 / torch.float16.
    overrides: sample_size=, any DDPM/DDIM scheduler config key (beta_schedule=, prediction_type=, ...),
    or an ADM checkpoint's flags.
    """
    return Pipeline.from_pretrained(path, device=device, dtype=dtype, **overrides)
