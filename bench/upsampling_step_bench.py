"""One upsampler step (their SuperResModel's forward: bilinear upsampling of the low-resolution image, the
concatenation and the U-Net) in fastddpm against the independent reference of guided-diffusion
(tests/adm_reference.py's SuperResModel), at a published upsampler's full flags, float32, batch 1.

    python bench/upsampling_step_bench.py [--size 256|512] [--device cpu|cuda] [--repeats 3]
                                          [--channels-last] [--out results.json]

Both sides hold the same random weights and see the same sample, timestep, label and low-resolution image;
they are timed interleaved (median of ``repeats`` after one warm-up each) and their outputs compared.
Nothing is written that was not measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.guided_step_bench import _cpu_name, _relative, timed  # noqa: E402
from fastddpm.checkpoints.adm_flags import parse_flag_string, resolve_super_res_flags  # noqa: E402
from fastddpm.models.adm_unet import AdmUNet  # noqa: E402
from fastddpm.models.conv import cpu_algorithm  # noqa: E402
from tests import adm_reference  # noqa: E402

# their README's MODEL_FLAGS for 64_256_upsampler.pt and 128_512_upsampler.pt, by output size
PUBLISHED = {
    256: "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --large_size 256 "
    "--small_size 64 --learn_sigma True --noise_schedule linear --num_channels 192 --num_heads 4 "
    "--num_res_blocks 2 --resblock_updown True --use_fp16 False --use_scale_shift_norm True",
    512: "--attention_resolutions 32,16 --class_cond True --diffusion_steps 1000 --large_size 512 "
    "--small_size 128 --learn_sigma True --noise_schedule linear --num_channels 192 --num_head_channels 64 "
    "--num_res_blocks 2 --resblock_updown True --use_fp16 False --use_scale_shift_norm True",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, choices=sorted(PUBLISHED))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true", help="fastddpm on NHWC (the CPU default)")
    parser.add_argument("--out", default=None, help="JSON results file")
    args = parser.parse_args()
    device = torch.device(args.device)
    flags = resolve_super_res_flags(parse_flag_string(PUBLISHED[args.size]))
    torch.manual_seed(0)
    reference = adm_reference.super_res_model_from_flags(flags).eval().to(device)
    weights = {k: v.clone() for k, v in reference.state_dict().items()}
    unet = AdmUNet.from_state_dict(flags, weights).to(device)
    size, small = flags["large_size"], flags["small_size"]
    x = torch.randn(1, 3, size, size, device=device)
    low_res = torch.rand(1, 3, small, small, device=device) * 2 - 1
    t = torch.tensor([500.0], device=device)
    y = torch.tensor([207], device=device)
    x_ours = x
    if args.channels_last:
        unet.to(memory_format=torch.channels_last)
        x_ours = x.contiguous(memory_format=torch.channels_last)

    def reference_step():
        with torch.no_grad():
            return reference(x, t, low_res=low_res, y=y)

    def our_step():
        with torch.no_grad():
            return unet(x_ours, t, class_labels=y, low_res=low_res)

    expected, got = reference_step(), our_step()  # warm-up, and what is compared
    times = {"reference_ms": [], "fastddpm_ms": []}
    for _ in range(args.repeats):
        times["reference_ms"].append(timed(reference_step, device))
        times["fastddpm_ms"].append(timed(our_step, device))
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "what": f"one upsampler step: {small} -> {size} px SuperResModel forward, published flags, float32, "
        "batch 1",
        "model_flags": PUBLISHED[args.size],
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": _cpu_name(),
        "threads": torch.get_num_threads(),
        "cpu_conv": cpu_algorithm(),
        "fastddpm_memory_format": "channels_last" if args.channels_last else "contiguous",
        "torch": torch.__version__,
        **{f"median_{k}": round(v, 1) for k, v in medians.items()},
        "runs": {k: [round(v, 1) for v in vs] for k, vs in times.items()},
        "speedup": round(medians["reference_ms"] / medians["fastddpm_ms"], 3),
        "output_max_relative_difference": _relative(got, expected),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
