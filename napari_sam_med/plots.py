"""Small line plots as PNG with Pillow only (no matplotlib): Dice-vs-clicks, training curves."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

from .outputs import write_bytes_atomic

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))


def line_plot(
    path: str | os.PathLike,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    y_range: tuple[float, float] = (0.0, 1.0),
    overwrite: bool = False,
) -> Path:
    """Write a PNG with one line per ``{name: (xs, ys)}`` (y clipped to ``y_range``); an
    existing ``path`` is refused unless ``overwrite``."""
    from PIL import Image, ImageDraw

    w, h, left, bottom, top, right = 640, 420, 50, 40, 20, 170
    img = Image.new("RGB", (w, h), "white")
    g = ImageDraw.Draw(img)
    xs_all = [float(x) for xs, _ in series.values() for x in xs] or [0.0, 1.0]
    x0, x1 = min(xs_all), max(max(xs_all), min(xs_all) + 1e-9)
    lo, hi = y_range
    pw, ph = w - left - right, h - top - bottom

    def xy(x: float, y: float) -> tuple[float, float]:
        yy = min(max((float(y) - lo) / (hi - lo), 0.0), 1.0)
        return left + pw * (float(x) - x0) / (x1 - x0), top + ph * (1.0 - yy)

    for i in range(11):
        y = top + ph * i / 10
        g.line([(left, y), (left + pw, y)], fill=(225, 225, 225))
        g.text((8, y - 6), f"{hi - (hi - lo) * i / 10:.2g}", fill="black")
    for i in range(6):
        x = x0 + (x1 - x0) * i / 5
        g.text((xy(x, lo)[0] - 6, top + ph + 6), f"{x:.4g}", fill="black")
    g.rectangle([left, top, left + pw, top + ph], outline="black")
    g.text((left + pw // 2 - 60, h - 16), xlabel, fill="black")
    for i, (name, (xs, ys)) in enumerate(series.items()):
        col = COLOURS[i % len(COLOURS)]
        pts = [xy(x, y) for x, y in zip(xs, ys, strict=True)]
        if len(pts) > 1:
            g.line(pts, fill=col, width=2)
        for px, py in pts:
            g.ellipse([px - 2, py - 2, px + 2, py + 2], fill=col)
        g.line([(left + pw + 10, top + 12 + 18 * i), (left + pw + 30, top + 12 + 18 * i)], col, 3)
        g.text((left + pw + 36, top + 6 + 18 * i), name[:20], fill="black")
    g.text((left + pw + 10, top + 6 + 18 * len(series)), ylabel, fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return write_bytes_atomic(Path(path), buf.getvalue(), overwrite)
