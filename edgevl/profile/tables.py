"""The profile as text: the terminal table and report.md."""

from __future__ import annotations

from typing import Any, Optional

from edgevl.profile.verdicts import NOISE_RATIO

COLUMNS = ("artifact", "p50 ms", "p90 ms", "p99 ms", "b8 items/s", "load s", "RSS MiB", "threads", "size MB",
           "GFLOP", "GFLOP/s", "% peak", "min cos", "top-1 (strict)")


def _f(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def label(a: dict[str, Any]) -> str:
    return f"{a['component']} {a['target']} {a['precision']}"


def _batch8(a: dict[str, Any]) -> Optional[float]:
    """Items/s at batch 8 on the same text length as the reference latency."""
    seq = (a.get("latency") or {}).get("seq")
    for c in a.get("configs") or []:
        if c.get("batch") == 8 and c.get("seq") == seq and "items_per_s" in c:
            return c["items_per_s"]
    return None


def row(a: dict[str, Any]) -> list[str]:
    lat = a.get("latency") or {}
    p = a.get("parity") or {}
    top1 = "-" if p.get("top1_agreement") is None else (
        f"{p['top1_agreement']:.3f}" + (f" ({p['top1_agreement_strict']:.3f})" if p.get("top1_agreement_strict") is not None else ""))
    ms = lambda key: _f(lat[key] * 1e3 if key in lat else None, ".2f")  # noqa: E731
    return [
        label(a), ms("p50_s"), ms("p90_s"), ms("p99_s"), _f(_batch8(a), ".1f"), _f(a.get("load_s"), ".2f"),
        _f(a["peak_rss_bytes"] / 2**20 if a.get("peak_rss_bytes") else None, ".0f"),
        str(a.get("process_threads") or "-"),
        _f(a["bytes"] / 1e6 if a.get("bytes") else None, ".1f"),
        _f(a["flops"] / 1e9 if a.get("flops") else None, ".3f"),
        _f(a["achieved_flops_per_s"] / 1e9 if a.get("achieved_flops_per_s") else None, ".1f"),
        _f(a["fraction_of_peak"] * 100 if a.get("fraction_of_peak") else None, ".1f"),
        _f(p.get("cosine_min"), ".6f"), top1,
    ]


def notes(profile: dict[str, Any]) -> list[str]:
    """Lines for skipped / failed artifacts and for every slower-than-fp32 flag."""
    lines = []
    for a in profile["artifacts"]:
        if a["status"] != "measured":
            lines.append(f"{label(a)}: {a['status']}: {a['reason']}")
        flag = a.get("slower_than_fp32")
        if flag:
            noise = f", within {NOISE_RATIO - 1:.0%}: may be noise" if flag["within_noise"] else ""
            lines.append(f"SLOWER than fp32 ({flag['ratio']:.2f}x the p50 latency of {flag['sibling']}{noise}): "
                         f"{label(a)}: {flag['reason']}")
    return lines


def terminal_table(profile: dict[str, Any]) -> str:
    rows = [list(COLUMNS)] + [row(a) for a in profile["artifacts"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    m, pk = profile["machine"], profile["peak"]
    lines.append(f"machine: {m['cpu_model']}, {m['usable_cores']} cores, {', '.join(m['isa_flags'])}; "
                 f"peak fp32 {pk['fp32_flops_per_s'] / 1e9:.1f} GFLOP/s"
                 + (f", int8 {pk['int8_ops_per_s'] / 1e9:.1f} GOP/s" if pk.get("int8_ops_per_s") else ""))
    lines.extend(notes(profile))
    return "\n".join(lines)


def markdown(profile: dict[str, Any]) -> str:
    m, pk, s = profile["machine"], profile["peak"], profile["settings"]
    out = [f"# edgevl profile: {profile['export']['folder']}", "",
           f"Model: {(profile['export'].get('model') or {}).get('name', '?')}; edgevl {profile['edgevl_version']}; "
           f"budget {s['budget_s']} s per artifact; batches {', '.join(map(str, s['batches']))}.", "",
           f"Machine: {m['cpu_model']}, {m['usable_cores']} usable cores ({m['logical_cores']} logical), "
           f"ISA {', '.join(m['isa_flags']) or 'n/a'}; int8 dot-product instructions: "
           f"{'yes' if m['int8_dot_product'] else 'no (no VNNI/AMX)'}.", "",
           f"GEMM peak: fp32 {pk['fp32_flops_per_s'] / 1e9:.1f} GFLOP/s ({pk['fp32_source']}); int8 "
           + (f"{pk['int8_ops_per_s'] / 1e9:.1f} GOP/s ({pk['int8_source']})" if pk.get("int8_ops_per_s") else pk["int8_source"])
           + f"; bf16 {pk['bf16_source']}.", "",
           "Latency: batch 1, text at the preprocessing's context length. FLOPs counted from each graph "
           "(formulas in edgevl/profile/flops.py); % peak = achieved FLOP/s / the peak of the artifact's precision.", "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(row(a)) + " |" for a in profile["artifacts"]]
    extra = notes(profile)
    if extra:
        out += ["", "## Notes", ""] + [f"- {line}" for line in extra]
    out += ["", "## All timings", "", "| artifact | batch | text length | runs | p50 ms | p99 ms | items/s |", "|---|---|---|---|---|---|---|"]
    for a in profile["artifacts"]:
        for c in a.get("configs") or []:
            if "p50_s" in c:
                out.append(f"| {label(a)} | {c['batch']} | {c.get('seq') or '-'} | {c['runs']} | {c['p50_s'] * 1e3:.2f} | "
                           f"{c['p99_s'] * 1e3:.2f} | {c['items_per_s']:.1f} |")
            else:
                out.append(f"| {label(a)} | {c['batch']} | {c.get('seq') or '-'} | - | - | - | {c.get('error', '')} |")
    return "\n".join(out) + "\n"
