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


def test_labels_sit_right_of_every_point_and_below_the_legend_and_many_fit_inside():
    names = [f"{t} {g} {p} {k}" for t in ("image", "text") for g in ("onnx", "openvino", "coreml")
             for p in ("fp32", "int8", "palettize4") for k in ("tie-aware", "strict")]
    points = [Point(10.0 + i % 5, 0.999 - 0.0001 * (i % 3), name) for i, name in enumerate(names)]
    svg = scatter("t", points, "ms", "agreement", "p", legend=["onnx", "openvino", "coreml"], y_max=1.0)
    root = ET.fromstring(svg)
    height, width = float(root.get("height")), float(root.get("width"))
    circles = [c for c in root.iter(f"{NS}circle") if c.find(f"{NS}title") is not None]
    legend_y = max(float(c.get("cy")) for c in root.iter(f"{NS}circle") if c.find(f"{NS}title") is None)
    labels = [t for t in _texts(svg) if t.get("font-size") == "10"]
    assert len(labels) == len(points) == len(circles)
    baselines = sorted(float(t.get("y")) for t in labels)
    assert all(b - a >= 12 - 1e-9 for a, b in zip(baselines, baselines[1:]))
    assert min(baselines) - 10 > legend_y and max(baselines) <= height
    right_of_points = max(float(c.get("cx")) for c in circles) + 5
    assert all(float(t.get("x")) > right_of_points for t in labels)
    assert all(float(t.get("x")) + 6.0 * len(t.text) <= width for t in labels)
