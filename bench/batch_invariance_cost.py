"""What batch-invariant sampling costs on the CPU: the sampling step time of this checkout (invariant, the
default), of this checkout with FASTDDPM_BATCH_INVARIANT=0, and of an older checkout (the baseline), side by
side in one run.

Each variant is a worker process (its own interpreter, so each imports its own fastddpm); the parent asks
them in turn for one timed pipeline call at a time (interleaved, so a slow moment of the machine hits every
variant alike) and reports the median seconds per step and the ratio to the baseline. The nets: the built-in
digits model (8x8, what `fastddpm sample` runs) and a random net of the cifar10-32 checkpoint's structure
(35.7M parameters, 32x32). DDIM with Philox noise; one warm-up call per net and batch first.

    git worktree add /tmp/baseline <old revision> && (cd /tmp/baseline && FASTDDPM_CUDA=0 bash .ci/build_ext.sh)
    python bench/batch_invariance_cost.py --baseline /tmp/baseline [--repeats 7] [--out FILE.json]

The baseline checkout needs its fastddpm._C built in place (.ci/build_ext.sh does that). On a GPU
(`--device cuda`, no baseline needed) it compares the Triton batch-invariant layers (FASTDDPM_BATCH_INVARIANT=1)
with cuBLAS / cuDNN (=0), at batch 1, 8 and 64; not run yet (no GPU lent so far).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NETS = {"digits-8": dict(steps=20), "cifar10-32": dict(steps=4)}
BATCHES = (1, 8)

WORKER = r"""
import json, sys, time, torch
import fastddpm
from fastddpm.models.unet import UNet2D
torch.set_num_threads(int(sys.argv[1]))
CIFAR10 = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
    "block_out_channels": [128, 256, 256, 256], "norm_num_groups": 32, "norm_eps": 1e-6,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "act_fn": "silu", "attention_head_dim": None, "center_input_sample": False, "downsample_padding": 0,
    "flip_sin_to_cos": False, "freq_shift": 1, "mid_block_scale_factor": 1, "time_embedding_type": "positional",
}
torch.manual_seed(0)
pipes = {"digits-8": fastddpm.load(None), "cifar10-32": fastddpm.Pipeline(UNet2D.from_config(CIFAR10).eval())}
for pipe in pipes.values():
    pipe.to(sys.argv[2])
print("ready", flush=True)
for line in sys.stdin:
    net, batch, steps = line.split()
    run = dict(num_inference_steps=int(steps), sampler="ddim", noise="philox", seed=1, output_type="pt",
               progress=False)
    start = time.perf_counter()
    pipes[net](batch_size=int(batch), **run)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    print(json.dumps(time.perf_counter() - start), flush=True)
"""


def start_worker(checkout: Path, threads: int, invariant: str | None, device: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS=str(threads))
    env.pop("FASTDDPM_BATCH_INVARIANT", None)
    if invariant is not None:
        env["FASTDDPM_BATCH_INVARIANT"] = invariant
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(threads), device],
        cwd=checkout,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    if worker.stdout.readline().strip() != "ready":
        raise SystemExit(f"worker for {checkout} did not start")
    return worker


def ask(worker: subprocess.Popen, net: str, batch: int) -> float:
    worker.stdin.write(f"{net} {batch} {NETS[net]['steps']}\n")
    worker.stdin.flush()
    return float(worker.stdout.readline())


def torch_device_name() -> str:
    import torch

    return torch.cuda.get_device_name()


def git_commit(checkout: Path) -> str | None:
    """The checkout's commit (with '+changes' when its tracked files differ from it), None outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(checkout), *args], capture_output=True, text=True
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return None
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def cpu_vector_sets() -> list[str]:
    """The vector instruction sets that decide which kernels oneDNN, MKL and fastddpm._C run."""
    with open("/proc/cpuinfo") as info:
        flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    return [name for name in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile") if name in flags]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, help="an older checkout, fastddpm._C built (CPU runs)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.baseline is None and args.device == "cpu":
        parser.error("--baseline is required on the CPU (the release to compare with)")
    variants = {}
    if args.baseline is not None:
        variants["baseline"] = start_worker(args.baseline.resolve(), args.threads, None, args.device)
    variants["invariant"] = start_worker(ROOT, args.threads, "1", args.device)
    variants["opt-out"] = start_worker(ROOT, args.threads, "0", args.device)
    reference = "baseline" if "baseline" in variants else "opt-out"
    batches = BATCHES if args.device == "cpu" else (1, 8, 64)
    times: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    for net in NETS:
        for batch in batches:
            key = f"{net} batch {batch}"
            for worker in variants.values():
                ask(worker, net, batch)  # warm-up: weight caches, oneDNN primitives
            for _ in range(args.repeats):
                for name, worker in variants.items():
                    times[name].setdefault(key, []).append(ask(worker, net, batch) / NETS[net]["steps"])
    for worker in variants.values():
        worker.stdin.close()
        worker.wait()
    rows = []
    for key in times[reference]:
        medians = {name: statistics.median(times[name][key]) for name in variants}
        ratios = {
            f"{name.replace('-', '_')}_vs_{reference.replace('-', '_')}": round(m / medians[reference], 3)
            for name, m in medians.items()
            if name != reference
        }
        rows.append(
            {
                "case": key,
                **{f"{name}_ms_per_step": round(1e3 * m, 3) for name, m in medians.items()},
                **ratios,
            }
        )
        print(json.dumps(rows[-1]))
    if args.out:
        cpu = platform.processor() or platform.machine()
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        record = {
            "cpu": names[0] if names else cpu,
            "device": args.device if args.device == "cpu" else torch_device_name(),
            "threads": args.threads,
            "repeats": args.repeats,
            "date": time.strftime("%Y-%m-%d"),
            "cpu_vector_sets": cpu_vector_sets(),
            "commit": git_commit(ROOT),
            "baseline": str(args.baseline) if args.baseline else None,
            "baseline_commit": git_commit(args.baseline) if args.baseline else None,
            "rows": rows,
        }
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
