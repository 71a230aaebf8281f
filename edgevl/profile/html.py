"""report.html: one self-contained page (inline SVG and CSS; no script, font or network fetch)."""

from __future__ import annotations

from html import escape
from typing import Any

from edgevl.profile.svg import Bar, Point, bar_chart, scatter
from edgevl.profile.tables import COLUMNS, label, notes, row

# The plots every report holds, by element id (a test checks each is present).
PLOT_IDS = ("plot-latency", "plot-accuracy-cosine", "plot-accuracy-top1", "plot-size", "plot-flops")
STYLE = ("body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;font-size:12px}"
         "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child,th:first-child{text-align:left}"
         "section{margin:18px 0}.note{color:#a40}")


def _measured(profile: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in profile["artifacts"] if a.get("latency")]


def plots(profile: dict[str, Any]) -> dict[str, str]:
    artifacts = profile["artifacts"]
    measured = _measured(profile)
    latency = [Bar(label(a), a["latency"]["p50_s"] * 1e3 if a.get("latency") else None,
                   whisker=a["latency"]["p99_s"] * 1e3 if a.get("latency") else None,
                   text=(f"p50 {a['latency']['p50_s'] * 1e3:.2f}, p99 {a['latency']['p99_s'] * 1e3:.2f}"
                         if a.get("latency") else f"not run: {a['reason']}"[:60])) for a in artifacts]
    targets = sorted({a["target"] for a in measured})
    cos_points, top1_points = [], []
    for a in measured:
        p, ms = a["parity"], a["latency"]["p50_s"] * 1e3
        series = targets.index(a["target"])
        if p.get("cosine_min") is not None:
            cos_points.append(Point(ms, p["cosine_min"], label(a), series=series))
        if p.get("top1_agreement") is not None:
            top1_points.append(Point(ms, p["top1_agreement"], label(a) + " tie-aware", series=series))
        if p.get("top1_agreement_strict") is not None:
            top1_points.append(Point(ms, p["top1_agreement_strict"], label(a) + " strict", filled=False, series=series))
    size = [Bar(label(a), a["bytes"] / 1e6 if a.get("bytes") else None, text=f"{a['bytes'] / 1e6:.1f} MB" if a.get("bytes") else "n/a")
            for a in artifacts]
    flops = [Bar(label(a), a["achieved_flops_per_s"] / 1e9 if a.get("achieved_flops_per_s") else None,
                 limit=a["peak_flops_per_s"] / 1e9 if a.get("peak_flops_per_s") else None,
                 text=(f"{a['achieved_flops_per_s'] / 1e9:.1f} of {a['peak_kind']} peak {a['peak_flops_per_s'] / 1e9:.1f}"
                       if a.get("achieved_flops_per_s") else "n/a")) for a in artifacts]
    return {
        "plot-latency": bar_chart("Latency per artifact, batch 1: p50 bar, p99 whisker", latency, "ms", "plot-latency"),
        "plot-accuracy-cosine": scatter("Accuracy vs latency: parity min cosine", cos_points, "p50 latency (ms)",
                                        "min cosine vs PyTorch", "plot-accuracy-cosine", legend=targets, y_max=1.0),
        "plot-accuracy-top1": scatter("Accuracy vs latency: zero-shot top-1 agreement (filled tie-aware, hollow strict)",
                                      top1_points, "p50 latency (ms)", "top-1 agreement", "plot-accuracy-top1", legend=targets,
                                      y_max=1.0),
        "plot-size": bar_chart("Size on disk", size, "MB", "plot-size"),
        "plot-flops": bar_chart("Achieved FLOP/s at batch 1; dashed tick: this machine's GEMM peak for the precision",
                                flops, "GFLOP/s", "plot-flops"),
    }


def page(profile: dict[str, Any]) -> str:
    m, pk = profile["machine"], profile["peak"]
    head = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>edgevl profile {escape(profile['export']['folder'])}</title><style>{STYLE}</style></head><body>")
    parts = [head, f"<h1>edgevl profile</h1><p>{escape(profile['export']['folder'])}; model "
             f"{escape(str((profile['export'].get('model') or {}).get('name', '?')))}</p>",
             f"<p>Machine: {escape(m['cpu_model'])}, {m['usable_cores']} usable cores, ISA {escape(', '.join(m['isa_flags']))}; "
             f"GEMM peak fp32 {pk['fp32_flops_per_s'] / 1e9:.1f} GFLOP/s"
             + (f", int8 {pk['int8_ops_per_s'] / 1e9:.1f} GOP/s" if pk.get("int8_ops_per_s") else "") + "</p>"]
    parts.append("<table><tr>" + "".join(f"<th>{escape(c)}</th>" for c in COLUMNS) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row(a)) + "</tr>" for a in profile["artifacts"]]
    parts.append("</table>")
    parts += [f"<p class=\"note\">{escape(line)}</p>" for line in notes(profile)]
    parts += [f"<section>{svg}</section>" for svg in plots(profile).values()]
    parts.append("</body></html>\n")
    return "\n".join(parts)
