"""The sampler quality plot (bench/sampler_quality.py --plot), drawn with Pillow alone.

Two panels side by side, classifier confidence and pixel FD against the number of steps (log scale: the
measured 5, 10, 20 fall evenly), one line per sampler and a dashed horizontal line per reference run
(DDIM at 50, DDPM at 1000 steps). Everything is drawn at twice the size and averaged down, which smooths the
lines and text that ImageDraw draws without anti-aliasing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 1280, 560
SCALE = 2
# tab10 without its grey, which is kept for the reference lines, and three darker hues for the eleven
# deterministic samplers (bench/sampler_quality.py's larger group)
COLOURS = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
    "#000080", "#808000", "#800000",
]  # fmt: skip
REFERENCE_STYLES = [("#000000", (14, 6)), ("#505050", (4, 3))]  # (colour, (dash, gap)) in output pixels
PANELS = [("confidence", "classifier confidence (higher is better)"), ("fd", "pixel FD (lower is better)")]
PLOT_TOP, PLOT_BOTTOM = 80, 480
PANEL_LEFTS, PANEL_WIDTH = [80, 580], 420
LABEL_ROOM = 135  # "DDPM@1000: 0.123" at 13 px is 115 px wide
LEGEND_LEFT = 1040


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2, 2.5 or 5 times a power of ten apart) within [low, high]."""
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(power * m for m in (1, 2, 2.5, 5, 10) if power * m >= raw)
    first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
    return [i * step for i in range(first, last + 1)]


def tick_label(value: float, step: float) -> str:
    """``value`` with as many decimals as the tick step needs (0.025 apart: 3 decimals)."""
    decimals = next(d for d in range(10) if abs(round(step, d) - step) < step * 1e-6)
    return f"{value:.{decimals}f}"


class Canvas:
    """An ImageDraw in output-pixel coordinates, drawing at SCALE times the size."""

    def __init__(self) -> None:
        self.image = Image.new("RGB", (WIDTH * SCALE, HEIGHT * SCALE), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.fonts = {size: ImageFont.load_default(size=size * SCALE) for size in (13, 15, 18)}

    def line(self, points: Sequence[tuple[float, float]], fill: str, width: float = 1) -> None:
        self.draw.line(
            [(x * SCALE, y * SCALE) for x, y in points], fill=fill, width=round(width * SCALE), joint="curve"
        )

    def dashed(
        self, x0: float, x1: float, y: float, fill: str, pattern: tuple[int, int], width: float = 1.5
    ) -> None:
        dash, gap = pattern
        x = x0
        while x < x1:
            self.line([(x, y), (min(x + dash, x1), y)], fill, width)
            x += dash + gap

    def dot(self, x: float, y: float, radius: float, fill: str) -> None:
        self.draw.ellipse(
            [(x - radius) * SCALE, (y - radius) * SCALE, (x + radius) * SCALE, (y + radius) * SCALE],
            fill=fill,
        )

    def text(
        self, xy: tuple[float, float], text: str, size: int = 13, anchor: str = "la", fill: str = "black"
    ) -> None:
        self.draw.text((xy[0] * SCALE, xy[1] * SCALE), text, font=self.fonts[size], anchor=anchor, fill=fill)

    def save(self, path: Path) -> Image.Image:
        image = self.image.reduce(SCALE)  # box average: 10 ms where a Lanczos resize took 90 ms
        image.save(path)
        return image


def draw_quality_plot(
    rows: Iterable[dict], path: Path, subtitle: str = "", references: Sequence[str] = ("ddim", "ddpm")
) -> Image.Image:
    """Draw ``rows`` (dicts with sampler, steps, confidence, fd, as bench/sampler_quality.py measures them)
    into the PNG ``path``. Rows of a sampler named in ``references`` become horizontal lines labelled
    NAME@STEPS; every other sampler is a line over its steps. Returns the image written."""
    rows = list(rows)
    reference_rows = [row for row in rows if row["sampler"] in references]
    series: dict[str, list[dict]] = {}
    for row in rows:
        if row["sampler"] not in references:
            series.setdefault(row["sampler"], []).append(row)
    if len(series) > len(COLOURS) or len(reference_rows) > len(REFERENCE_STYLES):
        raise ValueError(
            f"{len(series)} samplers and {len(reference_rows)} references: too many to tell apart"
        )
    steps = sorted({row["steps"] for line in series.values() for row in line})
    canvas = Canvas()
    title = "Sampler quality vs steps" + (f" ({subtitle})" if subtitle else "")
    canvas.text((WIDTH / 2, 24), title, size=18, anchor="mm")
    for left, (key, panel_title) in zip(PANEL_LEFTS, PANELS, strict=True):
        draw_panel(canvas, left, key, panel_title, steps, series, reference_rows)
    draw_legend(canvas, list(series), reference_rows)
    return canvas.save(path)


def draw_panel(
    canvas: Canvas,
    left: float,
    key: str,
    title: str,
    steps: list[int],
    series: dict[str, list[dict]],
    reference_rows: list[dict],
) -> None:
    right = left + PANEL_WIDTH
    values = [row[key] for line in series.values() for row in line] + [row[key] for row in reference_rows]
    # 6% of the range free beyond the outermost points: room for a reference label (16 px of 400) there
    span = max(values) - min(values) or abs(max(values)) or 1.0
    low, high = min(values) - 0.06 * span, max(values) + 0.06 * span
    ticks = nice_ticks(low, high)
    log_low, log_span = math.log(steps[0]), math.log(steps[-1] / steps[0]) or 1.0

    def x_of(step: int) -> float:
        # the steps keep clear of the panel's right LABEL_ROOM pixels, where the reference labels go
        return left + 24 + (PANEL_WIDTH - 24 - LABEL_ROOM) * (math.log(step) - log_low) / log_span

    def y_of(value: float) -> float:
        return PLOT_BOTTOM - (PLOT_BOTTOM - PLOT_TOP) * (value - low) / (high - low)

    canvas.text(((left + right) / 2, PLOT_TOP - 22), title, size=15, anchor="mm")
    for tick in ticks:
        y = y_of(tick)
        canvas.line([(left, y), (right, y)], "#e6e6e6")
        canvas.line([(left - 5, y), (left, y)], "black")
        canvas.text((left - 8, y), tick_label(tick, ticks[1] - ticks[0]), anchor="rm")
    for step in steps:
        x = x_of(step)
        canvas.line([(x, PLOT_TOP), (x, PLOT_BOTTOM)], "#e6e6e6")
        canvas.line([(x, PLOT_BOTTOM), (x, PLOT_BOTTOM + 5)], "black")
        canvas.text((x, PLOT_BOTTOM + 9), str(step), anchor="ma")
    canvas.text(((left + right) / 2, PLOT_BOTTOM + 34), "steps (log scale)", anchor="ma")
    canvas.line([(left, PLOT_TOP), (left, PLOT_BOTTOM), (right, PLOT_BOTTOM)], "black", 1.5)
    # reference labels sit above their line, or below it where the line above is closer than a label's height
    label_ys, previous = [], None
    for row in sorted(reference_rows, key=lambda row: y_of(row[key])):
        y = y_of(row[key])
        below = previous is not None and y - previous < 16
        label_ys.append((row, y + 3 if below else y - 3, "rt" if below else "rb"))
        previous = y
    for index, row in enumerate(reference_rows):
        colour, pattern = REFERENCE_STYLES[index]
        canvas.dashed(left, right, y_of(row[key]), colour, pattern)
    for row, label_y, anchor in label_ys:
        colour = REFERENCE_STYLES[reference_rows.index(row)][0]
        label = f"{row['sampler'].upper()}@{row['steps']}: {row[key]:.3f}"
        canvas.text((right - 4, label_y), label, anchor=anchor, fill=colour)
    for colour, line in zip(COLOURS, series.values(), strict=False):
        points = [(x_of(row["steps"]), y_of(row[key])) for row in sorted(line, key=lambda row: row["steps"])]
        canvas.line(points, colour, 2)
        for x, y in points:
            canvas.dot(x, y, 3.5, colour)


def draw_legend(canvas: Canvas, names: list[str], reference_rows: list[dict]) -> None:
    y = PLOT_TOP + 4
    for colour, name in zip(COLOURS, names, strict=False):
        canvas.line([(LEGEND_LEFT, y), (LEGEND_LEFT + 30, y)], colour, 2)
        canvas.dot(LEGEND_LEFT + 15, y, 3.5, colour)
        canvas.text((LEGEND_LEFT + 40, y), name, anchor="lm")
        y += 24
    for (colour, pattern), row in zip(REFERENCE_STYLES, reference_rows, strict=False):
        canvas.dashed(LEGEND_LEFT, LEGEND_LEFT + 30, y, colour, pattern)
        canvas.text((LEGEND_LEFT + 40, y), f"{row['sampler'].upper()} at {row['steps']} steps", anchor="lm")
        y += 24
