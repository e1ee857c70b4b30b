"""Small server-rendered SVG bar charts with a y-axis, gridlines, units and a legend.

No JavaScript and no build step: the view computes geometry here, `_bar_chart.html` draws it,
and every value is also in a <title> (hover, screen readers) and, on the page, in a table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WIDTH, HEIGHT = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 52, 712, 26, 172  # the plot area inside the view box


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: float
    series: int = 0  # CSS class chart-series-N
    series_name: str = ""


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class XLabel:
    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    y_ticks: list[Tick]
    x_labels: list[XLabel]
    series: list[str]  # legend, in colour order
    unit: str  # the y-axis title, e.g. "jobs" or "credits"
    left: int = LEFT
    right: int = RIGHT
    top: int = TOP
    bottom: int = BOTTOM
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def is_empty(self) -> bool:
        return not any(bar.value for bar in self.bars)


def nice_step(top: float, ticks: int = 4) -> float:
    """A round step (1, 2 or 5 times a power of ten) that splits 0..top into about `ticks`."""
    if top <= 0:
        return 1.0
    raw = top / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def _number(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def bar_chart(
    labels: list[str],
    series: dict[str, list[float]],
    *,
    unit: str,
    label_every: int = 1,
    whole_numbers: bool = True,
) -> Chart:
    """Side-by-side bars per label, one per series, on one y scale starting at zero."""
    names = list(series)
    if not labels:
        return Chart([], [], [], names, unit)
    top_value = max((float(v) for values in series.values() for v in values), default=0.0)
    step = nice_step(top_value)
    if whole_numbers:
        step = max(step, 1.0)
    top = step * max(1, math.ceil(top_value / step))
    plot_height = BOTTOM - TOP
    slot = (RIGHT - LEFT) / len(labels)
    sub = (slot - 2) / max(len(names), 1)
    bars = []
    for i, label in enumerate(labels):
        for j, name in enumerate(names):
            value = float(series[name][i])
            bar_height = max(value, 0) / top * plot_height
            bars.append(
                Bar(
                    x=LEFT + i * slot + 1 + j * sub,
                    y=BOTTOM - bar_height,
                    width=max(sub - 1, 1),
                    height=bar_height,
                    label=label,
                    value=value,
                    series=j,
                    series_name=name,
                )
            )
    ticks = [
        Tick(y=BOTTOM - (k * step) / top * plot_height, label=_number(k * step))
        for k in range(int(round(top / step)) + 1)
    ]
    x_labels = [
        XLabel(x=LEFT + i * slot + slot / 2, label=label)
        for i, label in enumerate(labels)
        if i % label_every == 0
    ]
    return Chart(bars, ticks, x_labels, names, unit)
