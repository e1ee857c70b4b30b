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
