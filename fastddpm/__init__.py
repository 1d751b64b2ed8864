"""fastddpm: fast, exact sampling from DDPM checkpoints.

    import fastddpm
    pipe = fastddpm.load("google/ddpm-cifar10-32")  # a folder, a .ckpt, a Hub id, or None: the built-in model
    images = pipe(batch_size=16, sampler="ddim", num_inference_steps=50, seed=0, noise="philox").images

See pipeline.Pipeline.__call__ for the sampling options, schedulers.py for the diffusers-compatible
schedulers, and ops.py for the fused ops and their backends.
"""

from .pipeline import Pipeline, PipelineOutput, load
from .schedulers import DDIMScheduler, DDPMScheduler, SchedulerOutput

__version__ = "0.1.0"

__all__ = [
    "DDIMScheduler",
    "DDPMScheduler",
    "Pipeline",
    "PipelineOutput",
    "SchedulerOutput",
    "__version__",
    "load",
]
