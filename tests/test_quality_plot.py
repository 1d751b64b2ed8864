"""bench/quality_plot.py, the Pillow plot of bench/sampler_quality.py, drawn from made-up rows."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageColor

from bench.quality_plot import COLOURS, HEIGHT, LEGEND_LEFT, PANEL_LEFTS, WIDTH, draw_quality_plot, nice_ticks

# "high" scores better on both panels (confidence up, FD down) than "low"; "mid" crosses over
ROWS = [
    {"sampler": name, "steps": steps, "confidence": confidence, "fd": fd}
    for name, values in {
        "high": [(0.93, 0.11), (0.94, 0.10), (0.95, 0.10)],
        "low": [(0.80, 0.45), (0.81, 0.40), (0.82, 0.30)],
        "mid": [(0.84, 0.35), (0.88, 0.20), (0.92, 0.12)],
    }.items()
    for steps, (confidence, fd) in zip([5, 10, 20], values, strict=True)
] + [
    {"sampler": "ddim", "steps": 50, "confidence": 0.90, "fd": 0.11},
    {"sampler": "ddpm", "steps": 1000, "confidence": 0.91, "fd": 0.10},
]


def pixels_near(image: np.ndarray, colour: str, tolerance: int = 40) -> np.ndarray:
    """(row, column) of the pixels within ``tolerance`` (summed over RGB) of ``colour``."""
    target = np.array(ImageColor.getrgb(colour))
    return np.argwhere(np.abs(image.astype(int) - target).sum(axis=2) <= tolerance)


@pytest.fixture(scope="module")
def plot(tmp_path_factory) -> np.ndarray:
    """The plot of ROWS as written to disk, read back as RGB (drawn once: ~0.15 s on the shared CPU)."""
    path = tmp_path_factory.mktemp("plot") / "quality.png"
    draw_quality_plot(ROWS, path, subtitle="made up")
    return np.asarray(Image.open(path).convert("RGB"))


def test_plot_is_a_png_of_the_set_size_with_each_sampler_in_its_colour(plot):
    assert plot.shape == (HEIGHT, WIDTH, 3)
    for colour in COLOURS[:3]:
        # 3 line segments and 3 dots per panel and a legend entry: measured 900-1200 pixels per colour
        assert len(pixels_near(plot, colour)) > 500, colour
    assert len(pixels_near(plot, "#000000")) > 2000  # axes, text and the DDIM@50 lines: measured 3570


def test_the_better_sampler_is_drawn_higher_for_confidence_and_lower_for_fd(plot):
    high, low = (pixels_near(plot, colour) for colour in COLOURS[:2])
    fd_left = PANEL_LEFTS[1]  # columns [0, fd_left): the confidence panel; [fd_left, LEGEND_LEFT): FD

    def mean_row(points: np.ndarray, left: int, right: int) -> float:
        return points[(points[:, 1] >= left) & (points[:, 1] < right), 0].mean()

    assert mean_row(high, 0, fd_left) < mean_row(low, 0, fd_left)  # image rows grow downwards
    assert mean_row(high, fd_left, LEGEND_LEFT) > mean_row(low, fd_left, LEGEND_LEFT)


def test_more_samplers_than_colours_are_refused(tmp_path):
    rows = [{"sampler": f"s{i}", "steps": 5, "confidence": 0.9, "fd": 0.1} for i in range(len(COLOURS) + 1)]
    with pytest.raises(ValueError, match="too many"):
        draw_quality_plot(rows, tmp_path / "quality.png")


@pytest.mark.parametrize(
    "low, high, expected",
    [
        (0.83, 0.94, [0.85, 0.875, 0.9, 0.925]),
        (0.08, 0.48, [0.1, 0.2, 0.3, 0.4]),
        (0, 10, [0, 2, 4, 6, 8, 10]),
    ],
)
def test_nice_ticks_are_round_and_inside_the_range(low, high, expected):
    assert nice_ticks(low, high) == pytest.approx(expected)


def test_the_bench_draws_one_plot_per_group_with_the_references_in_each(tmp_path):
    from bench.sampler_quality import PLOT_GROUPS, draw_group_plots

    deterministic, stochastic = (group[0] for group in PLOT_GROUPS.values())
    renamed = {"high": deterministic, "low": stochastic}
    rows = [
        dict(row, sampler=renamed.get(row["sampler"], row["sampler"]))
        for row in ROWS
        if row["sampler"] != "mid"
    ]
    written = draw_group_plots(rows, tmp_path / "quality.png", samples=3)
    assert [path.name for path in written] == ["quality.png", "quality-stochastic.png"]
    for path in written:
        image = np.asarray(Image.open(path).convert("RGB"))
        assert len(pixels_near(image, COLOURS[0])) > 500  # the group's one sampler, in the first colour
        assert len(pixels_near(image, COLOURS[1])) == 0
        assert len(pixels_near(image, "#000000")) > 2000  # the DDIM@50 line is in both
    only_deterministic = [row for row in rows if row["sampler"] != stochastic]
    assert [path.name for path in draw_group_plots(only_deterministic, tmp_path / "q.png", 3)] == ["q.png"]
