"""Cost of the fused multistep update (ops.linear_update, the table-driven samplers' step) against the
U-Net forward it follows, on the CPU at cifar10-32, batch 64 (issue: the update must stay under 2% of a
step). Timed for the smallest and the largest solver states: DPM-Solver++ 3M (2 state slots), UniPC
order 3 (4) and PNDM with its Runge-Kutta warm-up (5).

Run: python -m pytest bench/test_bench_linear_update.py -p no:cacheprovider -s. All are timed here by
median of interleaved repeats (pytest-benchmark's groups would time them minutes apart on a shared
machine); the numbers print and the ratios are asserted.
"""

import statistics
import time

import torch
from fastddpm.kernels.step_columns import LIN_MATRIX, linear_state_slots

from fastddpm import ops
from fastddpm.models.unet import UNet2D
from fastddpm.schedulers import DPMSolverMultistepScheduler, PNDMScheduler, UniPCMultistepScheduler
from tests import model_factory

BATCH = 64
REPEATS = 3  # a U-Net forward at batch 64 took 40 s on two shared cores
UPDATES_PER_REPEAT = 20


SCHEDULERS = {
    "dpm++3m": DPMSolverMultistepScheduler(solver_order=3),
    "unipc order 3": UniPCMultistepScheduler(solver_order=3),
    "pndm with PRK": PNDMScheduler(),
}


def test_fused_linear_update_is_under_two_percent_of_a_step():
    torch.manual_seed(0)
    unet = UNet2D.from_config(model_factory.cifar10_config()).eval()
    shape = (BATCH, 3, 32, 32)
    x = torch.randn(shape)
    t = torch.full((BATCH,), 500)
    updates = {}
    for name, scheduler in SCHEDULERS.items():
        scheduler.set_timesteps(20)
        row = scheduler.linear_table()[5]
        state = torch.randn((linear_state_slots(row.numel()), *shape))
        updates[name] = (row[LIN_MATRIX:], state)

    def update(name):
        matrix, state = updates[name]
        x_next, next_state = ops.linear_update(out, x, state, matrix, None)
        state.copy_(next_state)  # as the loop writes its static buffers
        return x_next

    forward_s, update_s = [], {name: [] for name in updates}
    with torch.inference_mode():
        out = unet(x, t)  # warm-up (weight caches, allocator)
        for name in updates:
            update(name)
        for _ in range(REPEATS):
            start = time.perf_counter()
            out = unet(x, t)
            forward_s.append(time.perf_counter() - start)
            for name in updates:
                start = time.perf_counter()
                for _ in range(UPDATES_PER_REPEAT):
                    update(name)
                update_s[name].append((time.perf_counter() - start) / UPDATES_PER_REPEAT)
    forward = statistics.median(forward_s)
    print(
        f"\ncifar10-32 batch {BATCH}, {torch.get_num_threads()} threads: U-Net forward {forward * 1e3:.1f} ms"
    )
    for name, times in update_s.items():
        fused = statistics.median(times)
        ratio = fused / (forward + fused)
        slots = updates[name][1].shape[0]
        print(
            f"  {name} ({slots} state slots): fused update {fused * 1e3:.2f} ms = {100 * ratio:.2f}% of a step"
        )
        assert ratio < 0.02, name
