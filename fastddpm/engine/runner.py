"""The engine runs plans: it owns the network's memory format, compile warm-up, the loop cache and CUDA-graph
capture, so the pipeline only connects a scheduler's plan, a noise source and a network to it.

A fused plan runs in the one static-buffer loop (sampling_loop.py), built once per settings and reused while
they repeat (a CLI run calls it once per batch), captured as one CUDA graph where graphs are used (the CUDA
default). An EagerPlan runs diffusers' standard loop (eager_loop.py), and says why when a graph was wanted.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from fastddpm.engine.conditioned_network import ConditionedNetwork
from fastddpm.engine.cuda_graph import CUDA_GRAPHS, GraphCalls, capture_step
from fastddpm.engine.eager_loop import run_eager_loop
from fastddpm.engine.guidance import ClassifierGuidance
from fastddpm.engine.noise_source import NoiseSource
from fastddpm.engine.plan import EagerPlan, SamplingPlan
from fastddpm.engine.sampling_loop import SamplingLoop


def prefer_channels_last(device: torch.device) -> bool:
    """NHWC by default. CPU, measured (cifar10-32 U-Net forward, float32, 2 threads, median of 12 runs,
    interleaved): batch 1: NCHW 134.7 ms, NHWC 108.3 ms (diffusers 167.3 ms); batch 8: NCHW 748 ms, NHWC
    688 ms (diffusers 779 ms) -- oneDNN skips its per-conv layout reorders. CUDA: cuDNN's tensor-core
    convolutions take NHWC natively (not measured here: no GPU was lent so far)."""
    return device.type in ("cpu", "cuda")


class SamplingEngine:
    """Runs plans with one U-Net (``timestep_scale``: how the checkpoint's net takes its timestep, see
    ConditionedNetwork)."""

    def __init__(
        self,
        unet: torch.nn.Module,
        timestep_scale: float | None = None,
        graph_calls: GraphCalls = CUDA_GRAPHS,
    ) -> None:
        self.unet, self.timestep_scale = unet, timestep_scale
        self.graph_calls = graph_calls  # the CUDA calls of graph capture (the tests stand them in on the CPU)
        self.memory_format = torch.contiguous_format
        self._loops: dict[tuple, tuple[SamplingLoop, Callable[[], None] | None, str]] = {}
        self._compiled = None

    @property
    def net_dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def forget(self) -> None:
        """Drop cached loops, graphs and the compiled net (after the network moved or changed dtype)."""
        self._loops.clear()
        self._compiled = None

    def sample(
        self,
        plan: SamplingPlan | EagerPlan,
        shape: tuple[int, ...],
        noise: NoiseSource,
        *,
        device: torch.device,
        x_T: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        low_res: torch.Tensor | None = None,
        sample_offset: int = 0,
        use_cuda_graph: bool | None = None,
        compile: bool = False,
        channels_last: bool | None = None,
        progress: bool = True,
        guidance: ClassifierGuidance | None = None,
    ) -> tuple[torch.Tensor, str]:
        """x_0 (float32) for one batch from x_T, and PipelineOutput.cuda_graph's value. ``guidance``: a
        classifier's (engine/guidance.py), applied by the plan's update where it takes a gradient (ADM's
        own loops), else as the network's score correction."""
        self._use_memory_format(channels_last, device)
        if guidance is not None:  # the classifier runs on the sample in the net's layout
            guidance.classifier.to(memory_format=self.memory_format)
        with tqdm(total=plan.steps, disable=not progress, desc=f"fastddpm {plan.name}", leave=False) as bar:
            if isinstance(plan, EagerPlan):
                network = self._network(plan, shape, device, class_labels, low_res, compile, guidance)
                x = run_eager_loop(network, plan.scheduler, x_T, noise, sample_offset, progress=bar)
                wanted = use_cuda_graph if use_cuda_graph is not None else device.type == "cuda"
                # a graph was asked for (or is the CUDA default) but this plan has no fused form
                status = (
                    f"fallback: {plan.name} runs diffusers' loop eagerly ({plan.reason})" if wanted else "off"
                )
                return x, status
            loop, replay, status = self._loop(
                plan, shape, device, noise, class_labels, low_res, compile, use_cuda_graph, guidance
            )
            draw = None
            if not noise.philox:
                make_draws = plan.host_noise or noise.host_draws
                draw = make_draws(shape, device)
            if not (isinstance(plan.init_noise_sigma, float) and plan.init_noise_sigma == 1.0):
                x_T = x_T * plan.init_noise_sigma
            x = loop.run(x_T, sample_offset, plan.noise_draws, draw, step=replay, progress=bar)
        return x.clone(), status

    # ---------------------------------------------------------------------------------------- internals
    def _network(
        self, plan, shape, device, class_labels, low_res, compile: bool, guidance=None
    ) -> ConditionedNetwork:
        """The conditioned network of this call; with ``compile``, over the compiled U-Net after one eager
        forward (ops decides each call's backend eagerly; the compiled graph looks the decisions up)."""
        channels = shape[1]
        update = getattr(plan, "update", None)
        network = ConditionedNetwork(
            self.unet, self.net_dtype, channels, self.timestep_scale, plan.reads_variance, guidance,
            update_takes_gradient=getattr(update, "takes_gradient", False),
        )  # fmt: skip
        network.set_class_labels(class_labels)
        network.set_low_res(low_res)
        if compile:
            t = plan.timesteps[:1].to(device).expand(shape[0])
            x = torch.zeros(shape, device=device).contiguous(memory_format=self.memory_format)
            network(x, t)
            network.unet = self._compiled_unet()
        return network

    def _loop(
        self, plan: SamplingPlan, shape, device, noise: NoiseSource, class_labels, low_res, compile,
        use_cuda_graph, guidance=None,
    ):  # fmt: skip
        """(loop, graph replay or None, cuda_graph status), built and (with graphs) captured once per key;
        a cached loop's network gets this batch's class labels and low-resolution images."""
        on_cuda = device.type == "cuda"
        if use_cuda_graph is None:
            use_cuda_graph = on_cuda
        if use_cuda_graph and device.type != self.graph_calls.device_type:
            raise ValueError("use_cuda_graph=True needs the pipeline on a CUDA device")
        philox_seed = noise.seed if noise.philox else None
        key = (
            plan.key(), shape, self.net_dtype, noise.mode, philox_seed, bool(compile), bool(use_cuda_graph),
            self.memory_format, self.timestep_scale, plan.reads_variance, class_labels is not None,
            None if low_res is None else tuple(low_res.shape),
            None if guidance is None else guidance.key(),
        )  # fmt: skip
        if key in self._loops:
            self._loops[key][0].network.set_class_labels(class_labels)
            self._loops[key][0].network.set_low_res(low_res)
            return self._loops[key]
        network = self._network(plan, shape, device, class_labels, low_res, compile, guidance)
        loop = SamplingLoop(network, plan, shape, device, self.memory_format, noise)
        replay, status = None, "off"
        if use_cuda_graph:
            capture = capture_step(loop.step, loop.buffers(), self.graph_calls)
            replay, status = capture.replay, capture.status
        self._loops.clear()  # one live graph at a time: each holds a private memory pool
        self._loops[key] = (loop, replay, status)
        return self._loops[key]

    def _use_memory_format(self, channels_last: bool | None, device: torch.device) -> None:
        """Convert the network's weights once to NHWC (channels_last) or back to NCHW."""
        wanted = prefer_channels_last(device) if channels_last is None else channels_last
        memory_format = torch.channels_last if wanted else torch.contiguous_format
        if memory_format != self.memory_format:
            self.unet.to(memory_format=memory_format)
            self.memory_format = memory_format
            self._compiled = None

    def _compiled_unet(self):
        if self._compiled is None:
            self._compiled = torch.compile(self.unet, fullgraph=True, dynamic=False)
        return self._compiled
