"""The report's SVG charts (`edgevl.profile.svg`) on the data that used to draw them badly: axes
that fit the data (no 0.9999 to 1.0001 axis when every agreement is 1.0), point labels that do
not sit on each other, value texts that are not clipped at the right edge."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from edgevl.profile.svg import CHAR_W, WIDTH, Bar, Point, bar_chart, scatter

NS = "{http://www.w3.org/2000/svg}"


def _texts(svg: str) -> list[ET.Element]:
    return list(ET.fromstring(svg).iter(f"{NS}text"))


def test_equal_values_at_the_cap_get_a_readable_axis_that_stops_at_the_cap():
    points = [Point(1.0 + i, 1.0, f"a{i}") for i in range(3)]
    svg = scatter("t", points, "ms", "agreement", "p", y_max=1.0)
    ticks = [float(t.text) for t in _texts(svg) if t.get("text-anchor") == "end" and t.text
             and re.fullmatch(r"[0-9.e+-]+", t.text)]
    assert max(ticks) == 1.0 and min(ticks) < 0.995  # the axis spans a visible range below 1
    assert all(t <= 1.0 for t in ticks)


def test_without_a_cap_equal_values_sit_mid_axis():
    svg = scatter("t", [Point(1.0, 5.0, "a"), Point(2.0, 5.0, "b")], "ms", "v", "p")
    ticks = sorted(float(t.text) for t in _texts(svg) if t.get("text-anchor") == "end" and t.text
                   and re.fullmatch(r"[0-9.e+-]+", t.text))
    assert ticks[0] < 5.0 < ticks[-1] and abs((ticks[0] + ticks[-1]) / 2 - 5.0) < 1e-9


def test_labels_of_points_at_the_same_place_do_not_overlap():
    points = [Point(2.0, 0.99, "text onnx int8 tie-aware"), Point(2.0, 0.99, "text onnx int8 strict"),
              Point(2.05, 0.99, "text openvino int8 tie-aware")]
    svg = scatter("t", points, "ms", "agreement", "p", y_max=1.0)
    labels = [t for t in _texts(svg) if t.get("font-size") == "10"]
    baselines = [float(t.get("y")) for t in labels]
    assert len(labels) == 3 and len(set(baselines)) == 3
    assert min(abs(a - b) for i, a in enumerate(baselines) for b in baselines[i + 1:]) >= 12


def test_value_text_past_the_longest_whisker_fits_inside_the_chart():
    text = "1234.5 ms (p99 2345.6 ms)"
    bars = [Bar("image onnx int8", 1234.5, whisker=2345.6, text=text), Bar("text onnx fp32", 10.0, text="10.0 ms")]
    svg = bar_chart("Latency", bars, "ms", "p")
    placed = next(t for t in _texts(svg) if t.text == text)
    assert float(placed.get("x")) + CHAR_W * len(text) <= WIDTH
