"""Inline SVG charts drawn in Python (no script, no font download): horizontal bars and scatter."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Optional, Sequence

WIDTH = 760
ROW = 22
LABEL_W = 230
PALETTE = ("#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477", "#66aa00")
FONT = 'font-family="sans-serif" font-size="12"'
# Width of one character of the 12 px sans-serif labels, rounded up (digits and lower case are
# narrower): what a label is given so it is not clipped at the chart's right edge.
CHAR_W = 7.0
# Smallest y span a scatter shows, as a share of the values' magnitude: equal values (every point
# at agreement 1.0) get a readable axis instead of one of +-1e-4.
MIN_Y_SPAN = 0.01
# Line pitch of the 10 px point labels.
LABEL_LINE = 12.0


@dataclass(frozen=True)
class Bar:
    label: str
    value: Optional[float]  # None: drawn as "n/a"
    whisker: Optional[float] = None  # e.g. p99, drawn as a line past the bar
    limit: Optional[float] = None  # e.g. the peak, drawn as a tick
    text: str = ""  # value as printed beside the bar


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str
    filled: bool = True
    series: int = 0


def _nice_max(value: float) -> float:
    return value * 1.08 if value > 0 else 1.0


def bar_chart(title: str, bars: Sequence[Bar], unit: str, plot_id: str) -> str:
    """One row per bar; the scale is shared, starting at zero."""
    top = max([b.value or 0 for b in bars] + [b.whisker or 0 for b in bars] + [b.limit or 0 for b in bars])
    # The bars leave room for the longest value text printed past their end (p99, peak).
    text_room = max([90.0] + [CHAR_W * len(b.text) + 8 for b in bars])
    scale = (WIDTH - LABEL_W - text_room) / _nice_max(top)
    height = 40 + ROW * len(bars) + 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="{plot_id}" class="plot" width="{WIDTH}" '
             f'height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}">',
             f'<text x="8" y="20" {FONT} font-weight="bold">{escape(title)} ({escape(unit)})</text>']
    for i, bar in enumerate(bars):
        y = 34 + i * ROW
        parts.append(f'<text x="{LABEL_W - 6}" y="{y + 14}" {FONT} text-anchor="end">{escape(bar.label)}</text>')
        if bar.value is None:
            parts.append(f'<text x="{LABEL_W + 4}" y="{y + 14}" {FONT} fill="#888">{escape(bar.text or "n/a")}</text>')
            continue
        w = max(bar.value * scale, 1.0)
        parts.append(f'<rect x="{LABEL_W}" y="{y + 3}" width="{w:.1f}" height="{ROW - 8}" fill="{PALETTE[i % len(PALETTE)]}"/>')
        end = LABEL_W + w
        if bar.whisker is not None:
            wx = LABEL_W + bar.whisker * scale
            parts.append(f'<line x1="{end:.1f}" y1="{y + 11}" x2="{wx:.1f}" y2="{y + 11}" stroke="#333"/>')
            parts.append(f'<line x1="{wx:.1f}" y1="{y + 5}" x2="{wx:.1f}" y2="{y + 17}" stroke="#333"/>')
            end = max(end, wx)
        if bar.limit is not None:
            lx = LABEL_W + bar.limit * scale
            parts.append(f'<line x1="{lx:.1f}" y1="{y + 1}" x2="{lx:.1f}" y2="{y + ROW - 3}" stroke="#000" '
                         'stroke-width="2" stroke-dasharray="3,2"/>')
            end = max(end, lx)
        parts.append(f'<text x="{end + 4:.1f}" y="{y + 14}" {FONT}>{escape(bar.text)}</text>')
    axis_y = 34 + ROW * len(bars) + 4
    axis_end = WIDTH - text_room
    parts.append(f'<line x1="{LABEL_W}" y1="{axis_y}" x2="{axis_end:.1f}" y2="{axis_y}" stroke="#999"/>')
    parts.append(f'<text x="{LABEL_W}" y="{axis_y + 16}" {FONT} fill="#555">0</text>')
    parts.append(f'<text x="{axis_end:.1f}" y="{axis_y + 16}" {FONT} fill="#555" text-anchor="end">'
                 f'{_nice_max(top):.3g} {escape(unit)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _y_range(ys: Sequence[float], y_max: Optional[float]) -> tuple[float, float]:
    """The y axis: the values padded by a tenth of their span, at least `MIN_Y_SPAN` of their
    magnitude in all, never past `y_max` (a cosine or an agreement never exceeds 1)."""
    lo, hi = min(ys), max(ys)
    span = max(hi - lo, MIN_Y_SPAN * max(abs(lo), abs(hi), 1e-12))
    pad = max((hi - lo) * 0.1, (span - (hi - lo)) / 2)
    lo, hi = lo - pad, hi + pad
    if y_max is not None and hi > y_max >= max(ys):
        lo, hi = lo - (hi - y_max), y_max
    return lo, hi


def _label_column(ys: Sequence[float], top: float, bottom: float, line: float = LABEL_LINE) -> list[float]:
    """Baselines for a column of point labels, one per point's y (in drawing order): each label
    as near its point as the column allows, never closer than `line` to another, kept between
    `top` and `bottom` (a crowded column is pushed up from the bottom)."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    placed = [0.0] * len(ys)
    floor = top
    for i in order:
        placed[i] = max(ys[i], floor)
        floor = placed[i] + line
    ceiling = bottom
    for i in reversed(order):
        placed[i] = min(placed[i], ceiling)
        ceiling = placed[i] - line
    return placed


def scatter(title: str, points: Sequence[Point], x_label: str, y_label: str, plot_id: str,
            legend: Sequence[str] = (), y_max: Optional[float] = None) -> str:
    """Points on linear axes fitted to the data (equal values get a readable span, capped at
    `y_max`). Each point's label sits in a column right of the plot, joined to its point by a thin
    line, so labels never cover points, each other or the legend (a row under the title)."""
    top_pad = 52 if legend else 36
    # The label column is as wide as the longest label (10 px text) and the chart as tall as the
    # column needs, so a profile of many artifacts keeps one label per line.
    right_pad = min(320.0, 24 + 6.0 * max((len(p.label) for p in points), default=0))
    width, left, bottom = WIDTH, 70, 50
    height = max(340, int(top_pad + bottom + LABEL_LINE * (len(points) + 1)))
    xs = [p.x for p in points] or [0.0, 1.0]
    ys = [p.y for p in points] or [0.0, 1.0]
    x0, x1 = 0.0, _nice_max(max(xs))
    y0, y1 = _y_range(ys, y_max)
    px = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right_pad)  # noqa: E731
    py = lambda y: height - bottom - (y - y0) / (y1 - y0) * (height - bottom - top_pad)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="{plot_id}" class="plot" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<text x="8" y="20" {FONT} font-weight="bold">{escape(title)}</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right_pad}" y2="{height - bottom}" stroke="#999"/>',
             f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{height - bottom}" stroke="#999"/>',
             f'<text x="{(left + width - right_pad) / 2}" y="{height - 12}" {FONT} text-anchor="middle">{escape(x_label)}</text>',
             f'<text x="14" y="{(height - bottom + top_pad) / 2}" {FONT} text-anchor="middle" '
             f'transform="rotate(-90 14 {(height - bottom + top_pad) / 2})">{escape(y_label)}</text>']
    for value in (x0, x1 / 2, x1):
        parts.append(f'<text x="{px(value):.1f}" y="{height - bottom + 16}" {FONT} fill="#555" '
                     f'text-anchor="middle">{value:.3g}</text>')
    for value in (y0, (y0 + y1) / 2, y1):
        parts.append(f'<text x="{left - 4}" y="{py(value) + 4:.1f}" {FONT} fill="#555" text-anchor="end">{value:.5g}</text>')
    column_x = width - right_pad + 16
    baselines = _label_column([py(p.y) + 3 for p in points], top_pad, height - bottom)
    for p, baseline in zip(points, baselines):
        color = PALETTE[p.series % len(PALETTE)]
        fill = color if p.filled else "white"
        parts.append(f'<line x1="{px(p.x) + 5:.1f}" y1="{py(p.y):.1f}" x2="{column_x - 3:.1f}" y2="{baseline - 3:.1f}" '
                     f'stroke="#bbb" stroke-width="0.8"/>')
        parts.append(f'<circle cx="{px(p.x):.1f}" cy="{py(p.y):.1f}" r="5" fill="{fill}" stroke="{color}" stroke-width="2">'
                     f'<title>{escape(p.label)}</title></circle>')
        parts.append(f'<text x="{column_x:.1f}" y="{baseline:.1f}" font-family="sans-serif" font-size="10">'
                     f'{escape(p.label)}</text>')
    legend_x = 8.0
    for i, name in enumerate(legend):
        parts.append(f'<circle cx="{legend_x + 5:.1f}" cy="34" r="5" fill="{PALETTE[i % len(PALETTE)]}"/>')
        parts.append(f'<text x="{legend_x + 14:.1f}" y="38" {FONT}>{escape(name)}</text>')
        legend_x += 14 + CHAR_W * len(name) + 16
    parts.append("</svg>")
    return "\n".join(parts)
