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
    scale = (WIDTH - LABEL_W - 90) / _nice_max(top)
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
    parts.append(f'<line x1="{LABEL_W}" y1="{axis_y}" x2="{WIDTH - 90}" y2="{axis_y}" stroke="#999"/>')
    parts.append(f'<text x="{LABEL_W}" y="{axis_y + 16}" {FONT} fill="#555">0</text>')
    parts.append(f'<text x="{WIDTH - 90}" y="{axis_y + 16}" {FONT} fill="#555" text-anchor="end">'
                 f'{_nice_max(top):.3g} {escape(unit)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def scatter(title: str, points: Sequence[Point], x_label: str, y_label: str, plot_id: str,
            legend: Sequence[str] = ()) -> str:
    """Points on linear axes fitted to the data (y range padded so equal values stay visible)."""
    width, height, left, bottom, top_pad, right_pad = WIDTH, 340, 70, 50, 36, 180
    xs = [p.x for p in points] or [0.0, 1.0]
    ys = [p.y for p in points] or [0.0, 1.0]
    x0, x1 = 0.0, _nice_max(max(xs))
    y0, y1 = min(ys), max(ys)
    pad = max((y1 - y0) * 0.1, 1e-4)
    y0, y1 = y0 - pad, y1 + pad
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
    for p in points:
        color = PALETTE[p.series % len(PALETTE)]
        fill = color if p.filled else "white"
        parts.append(f'<circle cx="{px(p.x):.1f}" cy="{py(p.y):.1f}" r="5" fill="{fill}" stroke="{color}" stroke-width="2">'
                     f'<title>{escape(p.label)}</title></circle>')
        parts.append(f'<text x="{px(p.x) + 7:.1f}" y="{py(p.y) - 6:.1f}" font-family="sans-serif" font-size="10">'
                     f'{escape(p.label)}</text>')
    for i, name in enumerate(legend):
        y = top_pad + 16 * i
        parts.append(f'<circle cx="{width - right_pad + 20}" cy="{y}" r="5" fill="{PALETTE[i % len(PALETTE)]}"/>')
        parts.append(f'<text x="{width - right_pad + 30}" y="{y + 4}" {FONT}>{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
