"""Optimisation profiles (min / opt / max shapes per input) and the ready `trtexec` command
lines for an engine-ready ONNX file, for TensorRT 10 (`--stronglyTyped`: precision from the
file's types and Q/DQ) and TensorRT 11 (strongly typed only: no precision flags at all).

Profiles: batch 1 / 1 / MAX_BATCH (latency at batch 1, room for batched galleries); text length
1 / context / context (prompts are short, the tokenizer pads to the context length). A
`--static-shapes` size pins min = opt = max.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

MAX_BATCH = 16
TRT_VERSIONS = ("10", "11")


def profiles(
    tower: "object", context_length: int, static: Optional[dict[str, int]] = None,
) -> dict[str, dict[str, list[int]]]:
    """Input name -> {"min", "opt", "max"} shapes for `tower` (a TowerSpec)."""
    static = static or {}
    ranges = {"batch": (1, 1, MAX_BATCH), "seq": (1, context_length, context_length)}
    out: dict[str, dict[str, list[int]]] = {}
    for sig in tower.inputs:
        shape = {"min": [], "opt": [], "max": []}
        for dim in sig.shape:
            if isinstance(dim, str):
                lo, opt, hi = (static[dim],) * 3 if dim in static else ranges.get(dim, (1, 1, MAX_BATCH))
            else:
                lo = opt = hi = int(dim)
            for key, size in zip(("min", "opt", "max"), (lo, opt, hi)):
                shape[key].append(size)
        out[sig.name] = shape
    return out


def _shapes(profile: dict[str, dict[str, list[int]]], key: str) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in shapes[key])}" for name, shapes in profile.items())


def trtexec_line(
    onnx_name: str, engine_name: str, profile: dict[str, dict[str, list[int]]], version: str,
    plugin: bool = False,
) -> str:
    """One trtexec command line, run from the folder that holds `onnx_name`."""
    args = ["trtexec", f"--onnx={onnx_name}"]
    if version == "10":
        args.append("--stronglyTyped")
    args += [f"--minShapes={_shapes(profile, 'min')}", f"--optShapes={_shapes(profile, 'opt')}",
             f"--maxShapes={_shapes(profile, 'max')}", "--timingCacheFile=timing.cache",
             f"--saveEngine={engine_name}", f"--exportLayerInfo={engine_name}.layers.json",
             "--dumpLayerInfo", "--profilingVerbosity=detailed"]
    line = " ".join(shlex.quote(a) for a in args)
    if plugin:
        # Python plugins (tensorrt.plugin) are registered by the Python process that builds the
        # engine; trtexec itself cannot load them.
        line = "# plugin flavour: build with edgevl.exporters.tensorrt_engine (Python), not trtexec\n# " + line
    return line


def write_script(
    folder: Path, onnx_name: str, engine_name: str, profile: dict[str, dict[str, list[int]]],
    plugin_onnx: Optional[str] = None,
) -> tuple[Path, dict[str, str]]:
    """`<onnx stem>.trtexec.sh` next to the ONNX file: the TensorRT 10 and 11 lines (and, for
    the plugin flavour, the plugin graph's line); returns its path and the lines."""
    lines = {f"tensorrt{v}": trtexec_line(onnx_name, engine_name, profile, v) for v in TRT_VERSIONS}
    if plugin_onnx:
        lines["tensorrt10_plugin"] = trtexec_line(plugin_onnx, engine_name.replace(".engine", ".plugin.engine"),
                                                  profile, "10", plugin=True)
    path = folder / (onnx_name.removesuffix(".onnx") + ".trtexec.sh")
    body = ["#!/bin/sh", "# Build the TensorRT engine on the device (run in this folder). Pick the line for your",
            "# TensorRT; --dumpLayerInfo lists the layers: a fused attention block shows as one attention layer.",
            "set -e", 'case "${TRT_MAJOR:-10}" in']
    body += [f"  11) {lines['tensorrt11']} ;;", f"  *) {lines['tensorrt10']} ;;", "esac"]
    if plugin_onnx:
        body += ["", "# TensorRT < 10.14 (no IAttention): the plugin graph", lines["tensorrt10_plugin"]]
    path.write_text("\n".join(body) + "\n")
    path.chmod(0o755)
    return path, lines
