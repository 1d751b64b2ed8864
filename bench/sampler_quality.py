"""The quality table of the samplers on the embedded digits model (prints a Markdown table).

    PYTHONPATH=. python bench/sampler_quality.py [samples] [--ddpm] [--json FILE] [--plot FILE.png]
    PYTHONPATH=. python bench/sampler_quality.py --from-json FILE [--plot FILE.png]

Each row samples ``samples`` images (noise="philox", seed 0) and reports the digit classifier's mean top
probability (tests/test_default_model.py), the smallest per-digit share, and the pixel Frechet distance
between the samples and the 1797 real 8x8 digits (64-d pixel vectors, in [0, 1]). DDPM at 1000 steps
only with --ddpm (1000 forwards). --json writes the rows (rewritten after each row, so a long run that is
stopped keeps what it measured); --from-json reads them back instead of sampling; --plot FILE.png draws them
(bench/quality_plot.py): the deterministic samplers into FILE.png, the stochastic ones into
FILE-stochastic.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality_plot import draw_quality_plot  # noqa: E402

# Every sampler of fastddpm/sampler_registry.py but the two references, split into two plots so that each
# line keeps a colour of its own: the deterministic ones, and those that draw fresh noise at every step.
# tests/test_sampler_quality.py checks that the two groups together name every registered sampler.
PLOT_GROUPS = {
    "": ["dpm++2m", "dpm++3m", "dpm++2s", "dpm++3s", "unipc", "deis", "euler", "heun", "kdpm2", "lms", "pndm"],
    "-stochastic": ["dpm++2m-sde", "dpm++2s-sde", "dpm-sde", "euler-a", "kdpm2-a", "sa-solver"],
}  # fmt: skip
SAMPLERS = [name for group in PLOT_GROUPS.values() for name in group]
STEPS = [5, 10, 20]
REFERENCES = [("ddim", 50), ("ddpm", 1000)]


def pixel_fd(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance of two Gaussians fitted to the rows of a and b. tr sqrt(cov_a cov_b) is taken as the
    sum of the square roots of its eigenvalues (real and >= 0 for two covariances): scipy's sqrtm warned
    "matrix is singular" on every row, since some border pixels are always 0 in the real digits; the two
    agree to 5 digits on the table's rows (dpm++2m@10 0.11268, euler-a@5 0.46346, ddim@50 0.10720)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    trace_root = np.sqrt(np.clip(np.linalg.eigvals(cov_a @ cov_b).real, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b) - 2 * trace_root)


def table_header(samples: int) -> str:
    return f"| sampler | steps | confidence | min digit share | pixel FD |  ({samples} samples, seed 0)\n|---|---|---|---|---|"


def table_row(row: dict) -> str:
    return f"| {row['sampler']} | {row['steps']} | {row['confidence']:.3f} | {row['min_share']:.3f} | {row['fd']:.3f} |"


def measure(runs: list[tuple[str, int]], samples: int, json_path: Path | None) -> list[dict]:
    from sklearn.datasets import load_digits

    import fastddpm
    from tests.test_default_model import classify, digit_classifier

    pipe, classifier = fastddpm.load(), digit_classifier()
    real = load_digits().data / 16.0
    rows: list[dict] = []
    print(table_header(samples))
    for name, steps in runs:
        start = time.perf_counter()
        images = pipe(
            batch_size=samples, sampler=name, num_inference_steps=steps, seed=0, noise="philox",
            output_type="np", progress=False,
        ).images  # fmt: skip
        seconds = time.perf_counter() - start
        uint8 = (images * 255).round().astype(np.uint8)
        confidence, shares = classify(classifier, uint8)
        fd = pixel_fd(uint8.reshape(samples, 64) / 255.0, real)
        row = {
            "sampler": name, "steps": steps, "confidence": confidence, "min_share": float(shares.min()),
            "shares": [float(share) for share in shares], "fd": fd, "seconds": round(seconds, 1),
        }  # fmt: skip
        rows.append(row)
        print(table_row(row), flush=True)
        if json_path is not None:
            json_path.write_text(json.dumps({"samples": samples, "seed": 0, "rows": rows}, indent=1) + "\n")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("samples", nargs="?", type=int, default=300)
    parser.add_argument("--ddpm", action="store_true", help="also DDPM at 1000 steps (1000 forwards)")
    parser.add_argument("--json", type=Path, help="write the measured rows here")
    parser.add_argument("--from-json", type=Path, help="read the rows from here instead of sampling")
    parser.add_argument("--plot", type=Path, help="draw confidence and pixel FD vs steps into this PNG")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        measured = json.loads(args.from_json.read_text())
        rows, samples = measured["rows"], measured["samples"]
        print(table_header(samples))
        print("\n".join(table_row(row) for row in rows))
    else:
        runs = [(name, steps) for name in SAMPLERS for steps in STEPS] + REFERENCES[: 2 if args.ddpm else 1]
        rows, samples = measure(runs, args.samples, args.json), args.samples
    if args.plot is not None:
        for path in draw_group_plots(rows, args.plot, samples):
            print(f"plot written to {path}")


def draw_group_plots(rows: list[dict], plot: Path, samples: int) -> list[Path]:
    """One plot per PLOT_GROUPS entry that has rows, each with the reference lines: FILE.png for the
    deterministic samplers, FILE-stochastic.png for the others. Returns the paths written."""
    plot.parent.mkdir(parents=True, exist_ok=True)
    references = {name for name, _ in REFERENCES}
    written = []
    for suffix, names in PLOT_GROUPS.items():
        group_rows = [row for row in rows if row["sampler"] in names or row["sampler"] in references]
        if not any(row["sampler"] in names for row in group_rows):
            continue
        kind = "stochastic samplers, " if suffix else ""
        path = plot.with_name(plot.stem + suffix + plot.suffix)
        draw_quality_plot(group_rows, path, subtitle=f"{kind}digits model, {samples} samples, seed 0")
        written.append(path)
    return written


if __name__ == "__main__":
    main()
