"""Cost of the fused multistep update (DPM-Solver's table-driven step) against the U-Net forward it
follows, on the CPU at cifar10-32, batch 64 (issue: the update must stay under 2% of a step).

Run: python -m pytest bench/test_bench_multistep.py -p no:cacheprovider -s. Both are timed here by
median of interleaved repeats (pytest-benchmark's groups would time them minutes apart on a shared
machine); the numbers print and the ratio is asserted.
"""

import statistics
import time

import torch

from fastddpm import ops
from fastddpm.models.unet import UNet2D
from fastddpm.ops.step_columns import MS_HISTORY
from fastddpm.schedulers import DPMSolverMultistepScheduler
from tests import model_factory

BATCH = 64
REPEATS = 3  # a U-Net forward at batch 64 took 40 s on two shared cores
UPDATES_PER_REPEAT = 20


def test_fused_multistep_update_is_under_two_percent_of_a_step():
    torch.manual_seed(0)
    unet = UNet2D.from_config(model_factory.cifar10_config()).eval()
    shape = (BATCH, 3, 32, 32)
    scheduler = DPMSolverMultistepScheduler(solver_order=3)
    scheduler.set_timesteps(20)
    table = scheduler.step_table()
    x = torch.randn(shape)
    history = torch.randn((MS_HISTORY, *shape))
    t = scheduler.timesteps[5].reshape(1).expand(BATCH)

    def update():
        x_next, converted = ops.multistep_update(out, x, history, table[5], None)
        history[1].copy_(history[0])
        history[0].copy_(converted)
        return x_next

    forward_s, update_s = [], []
    with torch.inference_mode():
        out = unet(x, t)  # warm-up (weight caches, allocator)
        update()
        for _ in range(REPEATS):
            start = time.perf_counter()
            out = unet(x, t)
            forward_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(UPDATES_PER_REPEAT):
                update()
            update_s.append((time.perf_counter() - start) / UPDATES_PER_REPEAT)
    forward, fused = statistics.median(forward_s), statistics.median(update_s)
    ratio = fused / (forward + fused)
    print(
        f"\ncifar10-32 batch {BATCH}, {torch.get_num_threads()} threads: U-Net forward {forward * 1e3:.1f} ms, "
        f"fused multistep update {fused * 1e3:.2f} ms, update share of a step {100 * ratio:.2f}%"
    )
    assert ratio < 0.02
