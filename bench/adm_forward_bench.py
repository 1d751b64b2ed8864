"""fastddpm's ADM U-Net forward against the independent reference (tests/adm_reference.py, which matches
OpenAI's UNetModel), at the guided-diffusion 256x256 uncond flags, float32, batch 1.

    python bench/adm_forward_bench.py [--device cpu|cuda] [--repeats 3] [--width 256] [--out results.json]

Both nets hold the same random weights (torch's default init); the two are timed interleaved (median of
``repeats`` after one warm-up each) and their outputs compared. ``--width`` below 256 shrinks num_channels
(and the heads to match) for a quick run; the JSON records what ran. Nothing is written that was not
measured. bench/gpu_check.sh can call it with --device cuda --out $OUT/adm_forward.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastddpm.checkpoints.adm_flags import parse_flag_string, resolve_flags  # noqa: E402
from fastddpm.models.adm_unet import AdmUNet  # noqa: E402
from tests import adm_reference  # noqa: E402

GUIDED_256_UNCOND = (
    "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 "
    "--learn_sigma True --noise_schedule linear --num_channels {width} --num_head_channels 64 "
    "--num_res_blocks 2 --resblock_updown True --use_fp16 False --use_scale_shift_norm True"
)


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=256, help="num_channels (256: the published model)")
    parser.add_argument("--size", type=int, default=256, help="image side")
    parser.add_argument("--out", default=None, help="JSON results file")
    parser.add_argument(
        "--channels-last", action="store_true", help="fastddpm on NHWC (the pipeline's CPU default)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    flags = resolve_flags(parse_flag_string(GUIDED_256_UNCOND.format(width=args.width)))
    torch.manual_seed(0)
    reference = adm_reference.model_from_flags(flags, flags["channel_mult"]).eval().to(device)
    ours = AdmUNet.from_state_dict(flags, {k: v.clone() for k, v in reference.state_dict().items()}).to(
        device
    )
    x = torch.randn(1, 3, args.size, args.size, device=device)
    t = torch.tensor([500.0], device=device)
    x_ours = x
    if args.channels_last:
        ours.to(memory_format=torch.channels_last)
        x_ours = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, got = reference(x, t), ours(x_ours, t)  # warm-up and the outputs compared
        times = {"reference_ms": [], "fastddpm_ms": []}
        for _ in range(args.repeats):
            times["reference_ms"].append(timed(lambda: reference(x, t), device))
            times["fastddpm_ms"].append(timed(lambda: ours(x_ours, t), device))
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "what": "ADM U-Net forward, guided-diffusion 256x256 uncond flags, float32, batch 1",
        "num_channels": args.width,
        "image_side": args.size,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "fastddpm_memory_format": "channels_last" if args.channels_last else "contiguous",
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in ours.parameters()),
        **{f"median_{k}": round(v, 2) for k, v in medians.items()},
        "runs": times,
        "speedup": round(medians["reference_ms"] / medians["fastddpm_ms"], 3),
        "max_relative_difference": ((got - expected).abs().max() / expected.abs().max()).item(),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
