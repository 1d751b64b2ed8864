"""The quality table of the samplers on the embedded digits model (prints a Markdown table).

    PYTHONPATH=. python bench/sampler_quality.py [samples] [--ddpm]

Each row samples ``samples`` images (noise="philox", seed 0) and reports the digit classifier's mean top
probability (tests/test_default_model.py), the smallest per-digit share, and the pixel Frechet distance
between the samples and the 1797 real 8x8 digits (64-d pixel vectors, in [0, 1]). DDPM at 1000 steps
only with --ddpm (1000 forwards).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import linalg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_default_model import classify, digit_classifier  # noqa: E402

SAMPLERS = ["dpm++2m", "dpm++3m", "dpm++2m-sde", "unipc", "deis", "euler", "euler-a", "heun", "pndm"]
STEPS = [5, 10, 20]


def pixel_fd(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def main() -> None:
    from sklearn.datasets import load_digits

    import fastddpm

    samples = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 300
    runs = [(name, steps) for name in SAMPLERS for steps in STEPS] + [("ddim", 50)]
    if "--ddpm" in sys.argv:
        runs.append(("ddpm", 1000))
    pipe, classifier = fastddpm.load(), digit_classifier()
    real = load_digits().data / 16.0
    print(f"| sampler | steps | confidence | min digit share | pixel FD |  ({samples} samples, seed 0)")
    print("|---|---|---|---|---|")
    for name, steps in runs:
        images = pipe(
            batch_size=samples, sampler=name, num_inference_steps=steps, seed=0, noise="philox",
            output_type="np", progress=False,
        ).images  # fmt: skip
        uint8 = (images * 255).round().astype(np.uint8)
        confidence, shares = classify(classifier, uint8)
        fd = pixel_fd(uint8.reshape(samples, 64) / 255.0, real)
        print(f"| {name} | {steps} | {confidence:.3f} | {shares.min():.3f} | {fd:.3f} |", flush=True)


if __name__ == "__main__":
    main()
