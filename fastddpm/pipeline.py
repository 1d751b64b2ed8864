"""The pipeline connects the pieces: a checkpoint's network and process, a sampler's plan, a noise source,
and the engine that runs the plan; then images.

``pipe(...)`` resolves the sampler (a name, a scheduler object, or ``pipe.scheduler``) to one scheduler,
asks it for its sampling plan (engine/plan.py), and hands the plan to the engine (engine/runner.py), which
owns the loop, the CUDA graph and compile. Nothing here depends on which scheduler made the plan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastddpm.engine.auto_batch import auto_batch_size
from fastddpm.engine.guidance import ClassifierGuidance
from fastddpm.engine.noise_source import NOISE_MODES, NoiseSource
from fastddpm.engine.plan import DEFAULT_STEPS, EagerPlan, SamplingPlan, plan_for
from fastddpm.engine.runner import SamplingEngine
from fastddpm.schedulers import samplers
from fastddpm.upsampling import low_res_batch, low_res_size

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
SAMPLERS = samplers.NAMES  # the sampler names (fastddpm/sampler_registry.py)
__all__ = ["NOISE_MODES", "SAMPLERS", "Pipeline", "PipelineOutput", "load"]
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


def check_sample_size(size: Any) -> None:
    """sample_size= given to load: a positive integer or a (height, width) pair of them, else a one-line
    ValueError (instead of a failure deep inside the first convolution)."""
    sizes = list(size) if isinstance(size, tuple | list) else [size]
    valid = len(sizes) in (1, 2) if isinstance(size, tuple | list) else True
    if not valid or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise ValueError(
            f"sample_size must be a positive integer or a (height, width) pair of them, got {size!r}"
        )


@dataclass
class PipelineOutput:
    """``images``: a list of PIL images, a float32 NHWC array in [0, 1], or an NCHW tensor in [0, 1].

    ``cuda_graph``: "replayed" (one captured CUDA graph ran every step), "off" (not requested), or
    "fallback: <why>" (requested, the capture failed, and the steps ran eagerly).
    """

    images: Any
    cuda_graph: str = "off"


class Pipeline:
    """A U-Net and its checkpoint's noise process; call it to sample images."""

    def __init__(
        self, unet: torch.nn.Module, scheduler_config: dict[str, Any] | None = None, source: str = ""
    ):
        self.unet = unet.eval()
        self.scheduler_config = dict(scheduler_config or {})
        # the checkpoint's process (ADM's GaussianDiffusion or a DDPMScheduler): the default sampler, and how
        # its network takes the timestep; pipe.scheduler may be replaced, the process stays
        self.process = samplers.make_process(self.scheduler_config)
        self.scheduler = self.process
        self.source = source
        self.engine = SamplingEngine(self.unet, self.process.network_timestep_scale())
        self._named: dict[tuple[str, bool], Any] = {}  # sampler name, karras -> scheduler
        self._plans: dict[tuple, tuple[Any, SamplingPlan]] = {}  # the latest call's plan
        self.classifier: torch.nn.Module | None = (
            None  # a noisy-image classifier for guidance (load(classifier=))
        )
        self.classifier_scale = 1.0  # the guidance scale when a call gives none (their classifier_scale flag)

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike | None = None, device=None, dtype=None, **overrides
    ) -> Pipeline:
        """Read a diffusers folder, a google/ddpm-* folder, an original DDPM checkpoint or a Hub id."""
        from fastddpm.checkpoints import read_checkpoint
        from fastddpm.checkpoints.adm_classifier import is_classifier_flag

        if "sample_size" in overrides:
            check_sample_size(overrides["sample_size"])
        classifier = overrides.pop("classifier", None)
        classifier_flags = {k: overrides.pop(k) for k in list(overrides) if is_classifier_flag(k)}
        if classifier is None and classifier_flags:
            raise ValueError(
                f"flag {sorted(classifier_flags)[0]!r} applies to a classifier, and none was given (classifier=)"
            )
        device, dtype = check_device(device), parse_dtype(dtype)
        loaded = read_checkpoint(
            DEFAULT_MODEL_DIR if path is None else path, device=device, dtype=dtype, **overrides
        )
        pipe = cls(loaded.unet, loaded.scheduler_config, loaded.source)
        if classifier is not None:
            shared = {k: overrides[k] for k in ("image_size",) if k in overrides}
            pipe.load_classifier(classifier, device=device, dtype=dtype, **shared, **classifier_flags)
        return pipe

    def load_classifier(self, path: str | os.PathLike, device=None, dtype=None, **flags) -> None:
        """Read guided-diffusion's noisy-image classifier (their EncoderUNetModel state dict) with their
        CLASSIFIER_FLAGS (image_size, classifier_width, ..., classifier_scale: the default scale) to guide
        this ADM model: it must be for the model's image size, and a class-conditional model's labels."""
        from fastddpm.checkpoints.adm_classifier import check_pairing, read_classifier

        classifier = read_classifier(path, flags, device=device or self.device, dtype=dtype or self.dtype)
        check_pairing(classifier, self.config, path)
        self.classifier = classifier
        self.classifier_scale = float(classifier.config["classifier_scale"])

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
        """Move the network and the classifier (and cast them: "fp32" / "bf16" / "fp16"); the sampler state
        stays float32."""
        self.unet.to(device=check_device(device), dtype=parse_dtype(dtype))
        if self.classifier is not None:
            self.classifier.to(device=check_device(device), dtype=parse_dtype(dtype))
        self.engine.forget()
        return self

    def sample_shape(self) -> tuple[int, int, int]:
        size = self.config["sample_size"]
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (self.config["in_channels"], height, width)

    def num_classes(self) -> int | None:
        """The number of classes of a class-conditional network, else None."""
        embedding = getattr(self.unet, "label_emb", None) or getattr(self.unet, "class_embedding", None)
        return embedding.num_embeddings if embedding is not None else None

    def philox_class_labels(self, count: int, seed: int, sample_offset: int = 0) -> torch.Tensor | None:
        """The labels ``pipe(noise="philox", seed=seed, sample_offset=...)`` draws for images sample_offset ..
        sample_offset + count - 1 when none are given (each depends on its index only), on the CPU; None for
        a call without labels. The CLI records them beside a class-conditional or guided run's images."""
        classes = self.label_classes()
        if classes is None:
            return None
        source = NoiseSource.for_call("philox", None, seed)
        return source.class_labels(count, classes, sample_offset, torch.device("cpu"))

    def label_classes(self) -> int | None:
        """How many classes a call's labels range over: the net's, else the guiding classifier's, else None."""
        classes = self.num_classes()
        if classes is None and self.classifier is not None:
            return self.classifier.num_classes
        return classes

    def make_scheduler(self, sampler: str, config: dict[str, Any] | None = None, karras: bool = False):
        """The scheduler a sampler name stands for, from the checkpoint's (or the given) scheduler config
        (for an ADM checkpoint: their ddpm / ddim loops, the other names on a diffusers-style config)."""
        return samplers.make(sampler, self.scheduler_config if config is None else config, karras)

    def default_steps(self, sampler: str | Any | None = None) -> int | None:
        """num_inference_steps when none is given, for this sampler (None: an ADM process's respacing)."""
        scheduler = self._scheduler_for(sampler, False)
        default = getattr(scheduler, "default_inference_steps", None)
        return default() if default is not None else DEFAULT_STEPS

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
        low_res: Any = None,
        classifier_scale: float | None = None,
    ) -> PipelineOutput | tuple:
        """Sample ``batch_size`` images.

        sampler: a name (ddpm, ddim, pndm, dpm++2m, dpm++3m, dpm++2m-sde, unipc, euler, euler-a, heun, deis;
        built from the checkpoint's scheduler config, with Karras sigmas when ``karras``), a scheduler
        instance (fastddpm's, or any diffusers-style one with set_timesteps and step), or None:
        ``pipe.scheduler`` (the checkpoint's DDPM process unless replaced, e.g. ``pipe.scheduler =
        fastddpm.UniPCMultistepScheduler.from_config(pipe.scheduler.config)``). Every fastddpm sampler runs in
        the one graphed, sync-free loop; configs whose step is not linear (dynamic thresholding on the fast
        samplers) and foreign scheduler objects run diffusers' loop eagerly.

        noise="torch" draws x_T and every step's noise from ``generator`` (or a CPU generator seeded with
        ``seed``) exactly as diffusers' DDPMPipeline / DDIMPipeline and standard loop do, so the images match
        theirs. noise="philox" makes image b depend only on (seed, sample_offset + b, settings): the same
        noise for any batch size or process split (a GPU's log / cos may differ from the CPU's in the last bits). Default steps: num_train_timesteps for ddpm, 50
        for the others.
        batch_size="auto" (CUDA) picks the largest batch that fits in free memory (auto_batch.py).
        use_cuda_graph (default: on CUDA) replays one captured graph of U-Net + sampler step for every step;
        compile=True runs the U-Net through torch.compile (on the CPU its convolutions then go through
        nn.Conv2d as inductor sees them, not fastddpm.models.conv's Winograd path, which eager mode uses).
        channels_last (default: on, engine/runner.py's prefer_channels_last) runs the network on NHWC
        activations and weights.

        ADM checkpoints (OpenAI improved-/guided-diffusion) sample as their p_sample_loop (sampler="ddpm",
        learned or fixed variances) or ddim_sample_loop (sampler="ddim", eta) over the process respaced by
        ``timestep_respacing`` (their syntax: "250", "10,15,20", "ddim25"; default: the load flags', or
        str(num_inference_steps)); noise="torch" draws one normal per step, the last included, as they do.
        The other sampler names run on their epsilon (x0 with predict_xstart) channels over all
        diffusion_steps (karras=True too), with a diffusers-style config of the same betas.
        ``class_labels`` (tensor or list, one per image) for class-conditional models; None draws uniform
        labels from the generator before x_T (as their image_sample.py), or from Philox. ``latents`` is
        x_T (float32 N(0, I), the batch's shape; scaled by the sampler's init_noise_sigma): then the
        generator's first draw is the first step's noise.

        An ADM upsampler (their SuperResModel, loaded with large_size / small_size) needs ``low_res``: the
        batch's low-resolution images as uint8 NHWC pixels (their npz's arr_0; scaled to [-1, 1] as their
        super_res_sample.py does) or a float NCHW tensor in [-1, 1]; image b is drawn from low_res[b]. Every
        sampler works on an upsampler.
        With a classifier (``load(..., classifier=path)``), every image is guided towards its label by
        ``classifier_scale`` (default: the classifier_scale flag given to load, else 1.0; 0 samples without
        guidance): ddpm / ddim as their p_sample_loop / ddim_sample_loop with cond_fn, the other samplers
        with the score correction eps - sqrt(1 - abar_t) * gradient before their update (engine/guidance.py).
        The labels are drawn or given as above, for an unconditional model too (then only the classifier
        sees them).
        """
        if batch_size == "auto":
            batch_size = auto_batch_size(self.unet, self.sample_shape(), self.dtype)
        self._check_call(batch_size, num_inference_steps, eta, output_type, seed, sample_offset)
        scheduler = self._scheduler_for(sampler, karras)
        kind = getattr(scheduler, "kind", None)
        if float(eta) != 0.0 and kind not in ("ddim", None):  # the CLI's rule: not silently ignored
            name = sampler if isinstance(sampler, str) else kind
            raise ValueError(f"eta={eta!r} applies to sampler ddim only; sampler {name} does not use it")
        self._check_respacing(scheduler, num_inference_steps, timestep_respacing)
        plan = self._plan(
            scheduler, num_inference_steps, eta=float(eta), use_clipped_model_output=bool(use_clipped_model_output),
            timestep_respacing=timestep_respacing, device=self.device, noise=noise,
        )  # fmt: skip
        guidance = self._guidance(classifier_scale)
        if guidance is not None and isinstance(plan, SamplingPlan) and hasattr(scheduler, "guided_plan"):
            plan = scheduler.guided_plan(plan)  # their own loops apply the gradient in the update
        self._check_output_channels(plan)
        source = NoiseSource.for_call(noise, generator, seed)
        shape = (batch_size, *self.sample_shape())
        labels = self._class_labels(class_labels, batch_size, source, sample_offset)
        small = self._low_res(low_res, batch_size)
        if guidance is None and self.num_classes() is None:
            labels = None  # drawn for the classifier (their order of draws), but scale 0: no one reads them
        x_T = self._initial_noise(latents, shape, source, sample_offset)
        x, graph_status = self.engine.sample(
            plan, shape, source, device=self.device, x_T=x_T, class_labels=labels, low_res=small,
            sample_offset=sample_offset,
            use_cuda_graph=use_cuda_graph, compile=compile, channels_last=channels_last, progress=progress,
            guidance=guidance,
        )  # fmt: skip
        images = to_output(x, output_type)
        return PipelineOutput(images, graph_status) if return_dict else (images,)

    # ----------------------------------------------------------------------------------------- pieces
    def _scheduler_for(self, sampler: str | Any | None, karras: bool):
        """One scheduler object for ``sampler``: a name's (built once per name), an instance, or pipe.scheduler."""
        if sampler is None or not isinstance(sampler, str):
            if karras:
                raise ValueError(
                    "karras=True applies to sampler names; this scheduler instance has its own config"
                )
            return self.scheduler if sampler is None else sampler
        key = (sampler, bool(karras))
        if key not in self._named:
            self._named[key] = self.make_scheduler(sampler, karras=karras)
        return self._named[key]

    def loaded_respacing(self) -> str | None:
        """The timestep_respacing given to load (an ADM flag), or None where there is none."""
        if getattr(self.process, "reference", None) != "openai":
            return None
        respacing = self.process.config.get("timestep_respacing")
        return None if respacing in (None, "") else str(respacing)

    def _check_respacing(self, scheduler, steps: int | None, respacing: str | int | None) -> None:
        """timestep_respacing sets the steps of an ADM checkpoint's own ddpm / ddim loops, and only theirs:
        refused (not ignored) where it cannot apply, or where num_inference_steps sets the steps too."""
        from fastddpm.schedulers.gaussian_diffusion import GaussianDiffusion

        loaded = self.loaded_respacing()
        if not isinstance(scheduler, GaussianDiffusion):
            if loaded is not None and respacing is None:  # one given here is refused by the plan
                name = getattr(scheduler, "kind", type(scheduler).__name__)
                raise ValueError(
                    f"timestep_respacing {loaded!r} given to load applies to ADM checkpoints' ddpm and ddim "
                    f"samplers only, and sampler {name} runs over all {len(self.process)} diffusion steps: "
                    "load without it"
                )
            return
        if steps is not None and respacing is not None:
            raise ValueError(
                f"num_inference_steps={steps} and timestep_respacing={respacing!r} both set the steps; give one"
            )
        if steps is not None and loaded is not None:
            raise ValueError(
                f"num_inference_steps={steps} and the timestep_respacing {loaded!r} given to load both set "
                "the steps; give one (timestep_respacing= here replaces the load's)"
            )

    def _plan(self, scheduler, steps: int | None, **settings) -> SamplingPlan | EagerPlan:
        """The scheduler's plan for these settings, kept while they repeat: a 1000-step DDPM table takes
        ~0.2 s of host work, which the CLI would otherwise pay per batch. Eager plans are made afresh (the
        scheduler's own loop needs set_timesteps on every call)."""
        key = (id(scheduler), steps, tuple(sorted(settings.items(), key=lambda item: item[0])))
        cached = self._plans.get(key)
        if cached is not None and cached[0] is scheduler:
            return cached[1]
        plan = plan_for(scheduler, steps, **settings)
        self._plans.clear()
        if isinstance(plan, SamplingPlan):
            self._plans[key] = (scheduler, plan)
        return plan

    def _guidance(self, scale: float | None) -> ClassifierGuidance | None:
        """The call's classifier guidance, or None (no classifier, or scale 0: their unguided sampling)."""
        if self.classifier is None:
            if scale is not None:
                raise ValueError(
                    "classifier_scale applies to a pipeline loaded with a classifier (classifier=)"
                )
            return None
        scale = self.classifier_scale if scale is None else scale
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not np.isfinite(scale):
            raise ValueError(f"classifier_scale must be a finite number, got {scale!r}")
        if scale == 0:
            return None
        process = self.process
        return ClassifierGuidance(
            self.classifier,
            float(scale),
            labels_to_net=self.num_classes() is not None,
            alphas_cumprod=process.training_alphas_cumprod(),
            prediction_type=process.prediction_type(),
        )

    def _check_output_channels(self, plan: SamplingPlan | EagerPlan) -> None:
        """A plan whose update reads learned variances needs a net with 2 x in_channels output channels."""
        if isinstance(plan, EagerPlan) or not plan.reads_variance:
            return
        out_channels = self.config.get("out_channels", self.config["in_channels"])
        if out_channels != 2 * self.config["in_channels"]:
            raise ValueError(
                f"{plan.name} with learned variances needs a U-Net with 2 x in_channels output channels, "
                f"this one has {out_channels}"
            )

    def _initial_noise(self, latents, shape, source: NoiseSource, sample_offset: int) -> torch.Tensor:
        if latents is None:
            return source.initial(shape, sample_offset, self.device)
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must have the batch's shape {shape}, got {tuple(latents.shape)}")
        return latents.to(device=self.device, dtype=torch.float32)

    def _class_labels(self, labels, batch_size: int, source: NoiseSource, sample_offset: int):
        """The batch's class labels (B,) int64 on the device, drawn when not given, or None for an
        unconditional net."""
        classes = self.label_classes()
        if classes is None:
            if labels is not None:
                raise ValueError("class_labels was given but this model is not class-conditional")
            return None
        if labels is None:
            return source.class_labels(batch_size, classes, sample_offset, self.device)
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
        return labels.to(device=self.device, dtype=torch.int64)

    def _low_res(self, low_res, batch_size: int) -> torch.Tensor | None:
        """An upsampler's low_res as its network takes it (fastddpm/upsampling.py), or None for other nets."""
        size = low_res_size(self.unet)
        if size is None:
            if low_res is not None:
                raise ValueError("low_res was given but this model is not an upsampler")
            return None
        if low_res is None:
            raise ValueError(
                f"low_res is required: this model is an upsampler from {size} px to "
                f"{self.sample_shape()[1]} px; give the batch's {size} x {size} images"
            )
        return low_res_batch(low_res, batch_size, size, self.device)

    def _check_call(self, batch_size, steps, eta, output_type, seed, sample_offset) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        train_steps = len(self.process)
        if steps is not None and not (isinstance(steps, int) and 1 <= steps <= train_steps):
            raise ValueError(f"num_inference_steps must be an integer in [1, {train_steps}], got {steps!r}")
        if not 0.0 <= float(eta) <= 1.0:  # NaN too; above 1, DDIM's sigma outgrows the step: NaN images
            raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")
        if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**63):
            raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        if not (isinstance(sample_offset, int) and 0 <= sample_offset < 2**32 - batch_size):
            raise ValueError(
                f"sample_offset must be an integer in [0, 2**32 - batch_size), got {sample_offset!r}"
            )


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
