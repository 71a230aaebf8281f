"""Flags for artifacts slower than their fp32 sibling (same target and component) on this
machine, with the likely reason, so a user is told before shipping a slower precision."""

from __future__ import annotations

from typing import Any, Optional

from edgevl.profile.machine import CpuInfo

# Latency ratios up to this are flagged as "within noise": timings on a shared machine scatter by
# a few percent between runs.
NOISE_RATIO = 1.05
# Precisions whose matrix products run as u8 x s8 integer dot products (weights and activations).
W8A8 = ("int8",)


def reason(precision: str, cpu: CpuInfo, int8_nodes: Optional[int] = None) -> str:
    """The likely cause of a slower `precision` artifact; `int8_nodes`: its graph's count of
    quantize / integer nodes (0: nothing in it runs in low precision)."""
    if precision != "fp32" and int8_nodes == 0:
        return (f"the {precision} artifact holds no low-precision node (every layer was kept float, "
                "e.g. by the accuracy gate), so it computes what fp32 computes: the difference is graph layout or noise")
    if precision in W8A8 and not cpu.int8_dot:
        isa = ", ".join(cpu.flags) or "no SIMD flags read"
        return (f"int8 on a CPU without VNNI/AMX ({isa}): int8 dot products take the u8*s8 "
                "int16-pair path (vpmaddubsw + vpmaddwd), no faster than fp32 FMA, so the "
                "quantize/dequantize work is a net cost; ship fp32 to such CPUs, or int8 to VNNI/AMX ones")
    return (f"{precision} overhead (quantize/dequantize) exceeds its gain at this size on this CPU")


def flag_slower(artifacts: list[dict[str, Any]], cpu: CpuInfo) -> None:
    """Set `slower_than_fp32` on each measured non-fp32 artifact slower than its measured fp32
    sibling: {sibling path, p50 latency ratio (>1), within_noise (ratio <= NOISE_RATIO), reason};
    None when it is not slower."""
    fp32 = {(a["target"], a["component"]): a for a in artifacts
            if a["precision"] == "fp32" and a.get("latency")}
    for a in artifacts:
        a.setdefault("slower_than_fp32", None)
        sibling = fp32.get((a["target"], a["component"]))
        if a["precision"] == "fp32" or sibling is None or not a.get("latency"):
            continue
        ratio = a["latency"]["p50_s"] / sibling["latency"]["p50_s"]
        if ratio > 1.0:
            a["slower_than_fp32"] = {"sibling": sibling["path"], "ratio": ratio, "within_noise": ratio <= NOISE_RATIO,
                                     "reason": reason(a["precision"], cpu, a.get("int8_nodes"))}
