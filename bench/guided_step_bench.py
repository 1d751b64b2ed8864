"""One classifier-guided step (diffusion forward + classifier forward and backward) in fastddpm against the
independent reference of guided-diffusion (tests/adm_reference.py, tests/adm_classifier_reference.py:
their UNetModel, EncoderUNetModel and classifier_sample.py's cond_fn), at a published model's and
classifier's full flags, float32, batch 1.

    python bench/guided_step_bench.py [--size 64|128|256|512] [--device cpu|cuda] [--repeats 3]
                                      [--channels-last] [--out results.json]

Both sides hold the same random weights; they are timed interleaved (median of ``repeats`` after one
warm-up each), and their outputs and gradients compared. fastddpm's side is what its sampling loop runs
per step (engine/conditioned_network.py with engine/guidance.py); its parts are timed too: the diffusion
forward alone, and the classifier's forward without autograd (the fused kernels) and with its backward
(autograd through the torch paths, which the fused kernels lack). Nothing is written that was not measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.adm_forward_bench import timed  # noqa: E402
from fastddpm.checkpoints.adm_classifier import resolve_classifier_flags  # noqa: E402
from fastddpm.checkpoints.adm_flags import parse_flag_string, resolve_flags  # noqa: E402
from fastddpm.engine.conditioned_network import ConditionedNetwork  # noqa: E402
from fastddpm.engine.guidance import ClassifierGuidance  # noqa: E402
from fastddpm.models.adm_classifier import AdmClassifier  # noqa: E402
from fastddpm.models.adm_unet import AdmUNet  # noqa: E402
from fastddpm.models.conv import cpu_algorithm  # noqa: E402
from tests import adm_classifier_reference, adm_reference  # noqa: E402

# their README's MODEL_FLAGS and (classifier_sample.py) classifier flags, per size
PUBLISHED = {
    64: (
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 "
        "--learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
        "--resblock_updown True --use_new_attention_order True --use_fp16 False --use_scale_shift_norm True",
        "--image_size 64 --classifier_depth 4",
    ),
    128: (
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 "
        "--learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 "
        "--resblock_updown True --use_fp16 False --use_scale_shift_norm True",
        "--image_size 128",
    ),
    256: (
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 256 "
        "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
        "--num_res_blocks 2 --resblock_updown True --use_fp16 False --use_scale_shift_norm True",
        "--image_size 256",
    ),
    512: (
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 512 "
        "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
        "--num_res_blocks 2 --resblock_updown True --use_fp16 False --use_scale_shift_norm True",
        "--image_size 512",
    ),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, choices=sorted(PUBLISHED))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="classifier_scale")
    parser.add_argument("--channels-last", action="store_true", help="fastddpm on NHWC (the CPU default)")
    parser.add_argument("--out", default=None, help="JSON results file")
    args = parser.parse_args()
    device = torch.device(args.device)
    model_text, classifier_text = PUBLISHED[args.size]
    flags = resolve_flags(parse_flag_string(model_text))
    classifier_flags = resolve_classifier_flags(parse_flag_string(classifier_text))
    torch.manual_seed(0)
    reference = adm_reference.model_from_flags(flags, flags["channel_mult"]).eval().to(device)
    reference_classifier = adm_classifier_reference.create_classifier(classifier_flags).eval().to(device)
    reference_classifier.requires_grad_(False)
    unet = AdmUNet.from_state_dict(flags, {k: v.clone() for k, v in reference.state_dict().items()})
    resolved = {
        **classifier_flags,
        "channel_mult": adm_classifier_reference.CHANNEL_MULT[args.size],
        "num_classes": 1000,
    }
    classifier = AdmClassifier.from_state_dict(
        resolved, {k: v.clone() for k, v in reference_classifier.state_dict().items()}
    )
    unet, classifier = unet.to(device), classifier.to(device)
    x = torch.randn(1, 3, args.size, args.size, device=device)
    t = torch.tensor([500.0], device=device)
    y = torch.tensor([207], device=device)
    x_ours = x
    if args.channels_last:
        unet.to(memory_format=torch.channels_last)
        classifier.to(memory_format=torch.channels_last)
        x_ours = x.contiguous(memory_format=torch.channels_last)
    # ADM's own loops apply the gradient in their update: the score correction's schedule is not read here
    unused_schedule = np.full(1000, 0.5)
    guidance = ClassifierGuidance(classifier, args.scale, labels_to_net=True, alphas_cumprod=unused_schedule)
    network = ConditionedNetwork(unet, torch.float32, 3, 1.0, True, guidance, update_takes_gradient=True)
    network.set_class_labels(y)
    cond_fn = adm_classifier_reference.cond_fn_for(reference_classifier, args.scale)

    def reference_step():
        with torch.no_grad():
            output = reference(x, t, y)
        return output, cond_fn(x, t, y)

    def our_step():
        with torch.no_grad():
            return network(x_ours, t)

    def classifier_forward():
        with torch.no_grad():
            classifier(x_ours, t)

    def diffusion_forward():
        with torch.no_grad():
            unet(x_ours, t, class_labels=y)

    expected, got = reference_step(), our_step()  # warm-up, and what is compared
    diffusion_forward(), classifier_forward()  # warm-up of the parts (weight transforms, backend choices)
    times = {"reference_ms": [], "fastddpm_ms": [], "fastddpm_diffusion_forward_ms": [],
             "fastddpm_classifier_forward_fused_ms": [], "fastddpm_classifier_forward_backward_ms": []}  # fmt: skip
    for _ in range(args.repeats):
        times["reference_ms"].append(timed(reference_step, device))
        times["fastddpm_ms"].append(timed(our_step, device))
        times["fastddpm_diffusion_forward_ms"].append(timed(diffusion_forward, device))
        times["fastddpm_classifier_forward_fused_ms"].append(timed(classifier_forward, device))
        times["fastddpm_classifier_forward_backward_ms"].append(
            timed(lambda: guidance.gradient(x_ours, t, y), device)
        )
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "what": f"one classifier-guided step: {args.size}x{args.size} model forward + classifier forward and "
        "backward, published flags, float32, batch 1",
        "model_flags": model_text,
        "classifier_flags": classifier_text,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": _cpu_name(),
        "threads": torch.get_num_threads(),
        "cpu_conv": cpu_algorithm(),
        "fastddpm_memory_format": "channels_last" if args.channels_last else "contiguous",
        "torch": torch.__version__,
        **{f"median_{k}": round(v, 1) for k, v in medians.items()},
        "runs": {k: [round(v, 1) for v in vs] for k, vs in times.items()},
        "speedup": round(medians["reference_ms"] / medians["fastddpm_ms"], 3),
        "output_max_relative_difference": _relative(got[0], expected[0]),
        "gradient_max_relative_difference": _relative(got[1], expected[1]),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.float() - expected.float()).abs().max() / expected.abs().max()).item()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    raise SystemExit(main())
