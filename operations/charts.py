"""Tiny server-rendered SVG bar charts: no JavaScript, no build step."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: float
    series: int = 0  # which series of a grouped chart (CSS class chart-series-N)


def bar_chart(points: list[tuple[str, float]], width: int = 720, height: int = 160) -> list[Bar]:
    if not points:
        return []
    top = max(value for _label, value in points) or 1
    slot = width / len(points)
    bars = []
    for i, (label, value) in enumerate(points):
        bar_height = (value / top) * (height - 20)
        bars.append(
            Bar(
                x=i * slot + 1,
                y=height - bar_height,
                width=max(slot - 2, 1),
                height=bar_height,
                label=label,
                value=value,
            )
        )
    return bars


def grouped_bar_chart(
    points: list[tuple[str, tuple[float, ...]]], width: int = 720, height: int = 160
) -> list[Bar]:
    """Side-by-side bars per label (one per series), on one scale."""
    if not points:
        return []
    top = max((v for _label, values in points for v in values), default=0) or 1
    slot = width / len(points)
    bars = []
    for i, (label, values) in enumerate(points):
        sub = (slot - 2) / max(len(values), 1)
        for j, value in enumerate(values):
            bar_height = (float(value) / float(top)) * (height - 20)
            bars.append(
                Bar(
                    x=i * slot + 1 + j * sub,
                    y=height - bar_height,
                    width=max(sub - 1, 1),
                    height=bar_height,
                    label=label,
                    value=value,
                    series=j,
                )
            )
    return bars
