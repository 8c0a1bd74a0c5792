"""Hand-written SVG charts for the lab's results: grouped bars and lines, axes, ticks, a legend.

No plotting library: the output is small, deterministic text (the same numbers always give the
same bytes), so regenerated charts diff cleanly and the site needs no extra dependency. Both
axes start at zero, so a bar twice as tall means twice as much.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

# Okabe and Ito's colour-blind-safe palette, in a fixed order so a series keeps its colour.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442")
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
WIDTH, HEIGHT = 720, 400
LEFT, RIGHT, TOP, BOTTOM = 78, 24, 72, 64  # room for the y label, the title + legend, the x label


@dataclass(frozen=True)
class Series:
    """One named line or one colour of bars."""

    name: str
    values: list[float]


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """0 and round steps (1, 2, 2.5 or 5 times a power of ten) up to at least `high`."""
    if high <= 0:
        return [0.0, 1.0]
    raw = high / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    steps = math.ceil(round(high / step, 9))
    return [round(i * step, 12) for i in range(steps + 1)]


def number(value: float) -> str:
    """A value as a label: thousands separated, at most three significant decimals."""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    decimals = max(2, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}".rstrip("0").rstrip(".")


def _text(x: float, y: float, content: str, *, anchor: str = "middle", size: int = 12,
          cls: str = "", extra: str = "") -> str:
    attrs = f' class="{cls}"' if cls else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}"{attrs}{extra}>'
            f"{escape(content)}</text>")


def _frame(title: str, x_label: str, y_label: str, y_ticks: list[float], names: list[str]) -> list[str]:
    """Background, title, legend, y grid with ticks, both axes and their labels."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" font-family={quoteattr(FONT)}>',
        f"<title>{escape(title)}</title>",
        # Opaque, so the chart stays readable on the site's dark theme too.
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        _text(WIDTH / 2, 24, title, size=15, cls="title", extra=' font-weight="600" fill="#111"'),
    ]
    # The legend: one row under the title, a swatch and a name per series.
    legend = ['<g class="legend">']
    x = LEFT
    for i, name in enumerate(names):
        colour = PALETTE[i % len(PALETTE)]
        legend.append(f'<rect x="{x}" y="40" width="12" height="12" fill="{colour}"/>')
        legend.append(_text(x + 18, 50.5, name, anchor="start", extra=' fill="#222"'))
        x += 18 + 7 * len(name) + 24
    legend.append("</g>")
    out += legend
    top = y_ticks[-1]
    out.append('<g class="y-axis">')
    for tick in y_ticks:
        y = TOP + plot_h - plot_h * tick / top
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        out.append(f'<line x1="{LEFT - 5}" y1="{y:.1f}" x2="{LEFT}" y2="{y:.1f}" stroke="#444"/>')
        out.append(_text(LEFT - 8, y + 4, number(tick), anchor="end", size=11, cls="tick", extra=' fill="#333"'))
    out.append("</g>")
    out.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#444"/>')
    out.append(f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" stroke="#444"/>')
    out.append(_text(LEFT + plot_w / 2, HEIGHT - 14, x_label, size=13, cls="axis-label x-label", extra=' fill="#111"'))
    cy = TOP + plot_h / 2
    out.append(_text(20, cy, y_label, size=13, cls="axis-label y-label",
                     extra=f' fill="#111" transform="rotate(-90 20 {cy:.1f})"'))
    return out


def bar_chart(*, title: str, x_label: str, y_label: str, categories: list[str], series: list[Series]) -> str:
    """Grouped bars: one group per category, one bar per series, each labelled with its value."""
    high = max((v for s in series for v in s.values), default=0.0)
    ticks = nice_ticks(high)
    out = _frame(title, x_label, y_label, ticks, [s.name for s in series])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    group_w = plot_w / max(1, len(categories))
    bar_w = group_w * 0.8 / max(1, len(series))
    out.append('<g class="bars">')
    for c, category in enumerate(categories):
        x0 = LEFT + c * group_w + group_w * 0.1
        for i, s in enumerate(series):
            value = s.values[c]
            h = plot_h * value / ticks[-1]
            x, y = x0 + i * bar_w, TOP + plot_h - h
            colour = PALETTE[i % len(PALETTE)]
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" fill="{colour}">'
                       f"<title>{escape(f'{category}, {s.name}: {number(value)}')}</title></rect>")
            out.append(_text(x + (bar_w - 2) / 2, y - 4, number(value), size=10, extra=' fill="#333"'))
        out.append(_text(LEFT + (c + 0.5) * group_w, TOP + plot_h + 18, category, size=12, cls="tick",
                         extra=' fill="#333"'))
    out += ["</g>", "</svg>"]
    return "\n".join(out) + "\n"


def line_chart(*, title: str, x_label: str, y_label: str, x: list[float], series: list[Series]) -> str:
    """Lines over a numeric x axis from 0, with a marker and a tick at every measured x."""
    high = max((v for s in series for v in s.values), default=0.0)
    ticks = nice_ticks(high)
    out = _frame(title, x_label, y_label, ticks, [s.name for s in series])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    x_max = max(x) if x else 1.0

    def px(value: float) -> float:
        return LEFT + plot_w * value / x_max * 0.96 + plot_w * 0.02

    def py(value: float) -> float:
        return TOP + plot_h - plot_h * value / ticks[-1]

    out.append('<g class="x-axis">')
    for value in x:
        out.append(f'<line x1="{px(value):.1f}" y1="{TOP + plot_h}" x2="{px(value):.1f}" y2="{TOP + plot_h + 5}" stroke="#444"/>')
        out.append(_text(px(value), TOP + plot_h + 18, number(value), size=11, cls="tick", extra=' fill="#333"'))
    out.append("</g>")
    out.append('<g class="lines">')
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        points = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, s.values))
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2.5"/>')
        for a, b in zip(x, s.values):
            out.append(f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="4" fill="{colour}">'
                       f"<title>{escape(f'{s.name} at {number(a)}: {number(b)}')}</title></circle>")
        # The last value, at the line's end, so the gap between the patterns reads at a glance.
        out.append(_text(px(x[-1]) - 6, py(s.values[-1]) - 8, number(s.values[-1]), anchor="end", size=11,
                         extra=f' fill="{colour}"'))
    out += ["</g>", "</svg>"]
    return "\n".join(out) + "\n"
