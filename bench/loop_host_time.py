"""Per-step host time of the sampling loop: what the loop itself costs, with a network that costs nothing.

The network is one multiply on a 1 x 3 x 8 x 8 sample, so a step's time is the loop's own work: the table
row and timestep reads, the network wrapper, the fused update's dispatch and the buffer copies. On a GPU
this is the time the host needs to enqueue a step when graphs are off; it must not grow when the loop is
restructured. Only the public API is used, so the same script measures two revisions:

    python bench/loop_host_time.py            # best of --repeats runs of --steps steps, per sampler

The best run, not the median: the loop's own cost is the floor; a shared machine only adds to it.

Prints one line per sampler (microseconds per step) and, with --json FILE, writes them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastddpm  # noqa: E402


class FreeNetwork(torch.nn.Module):
    """A stand-in U-Net: the config keys the pipeline reads and one multiply as its forward."""

    def __init__(self, side: int = 8) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))
        self.config = {"sample_size": side, "in_channels": 3, "out_channels": 3}

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, **_) -> torch.Tensor:
        return sample * self.scale


def microseconds_per_step(pipe, sampler: str, steps: int, repeats: int, noise: str) -> float:
    call = dict(batch_size=1, num_inference_steps=steps, sampler=sampler, seed=0, noise=noise, progress=False)
    call["output_type"] = "pt"
    pipe(**call)  # builds and caches the loop
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        pipe(**call)
        times.append(time.perf_counter() - started)
    return 1e6 * min(times) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None)
    parser.add_argument("--samplers", default="ddpm,ddim,dpm++2m,euler-a,heun", help="comma-separated names")
    parser.add_argument("--noise", default="philox,torch", help="comma-separated noise modes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = fastddpm.Pipeline(FreeNetwork(), {"num_train_timesteps": 1000})
    rows = {}
    with torch.no_grad():
        for sampler in args.samplers.split(","):
            for noise in args.noise.split(","):
                us = microseconds_per_step(pipe, sampler, args.steps, args.repeats, noise)
                rows[f"{sampler}/{noise}"] = us
                print(f"{sampler:>8} {noise:>6}: {us:7.1f} us/step")
    if args.json:
        record = {
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "us_per_step": rows,
        }
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
