"""edgevl's fp16 pass for TensorRT: a strongly typed fp16 graph written by ONNX Runtime's
converter (`onnxruntime.transformers.float16.convert_float_to_float16`), with the nodes that must
stay fp32 found by edgevl's own measurement.

nvidia-modelopt's `modelopt.onnx.autocast` does this job in NVIDIA's tool chain, but installing
`nvidia-modelopt[onnx]` replaces onnx and onnxruntime with older builds (onnxruntime-gpu).

1. The fp32 graph runs on ONNX Runtime over the gate split (never the parity split) with every
   float tensor as an output; each node's peak |value| over its float inputs and outputs is
   recorded (an attention mask input is left out: the pass casts it with saturation, below).
2. Every node whose peak exceeds fp16's range (65504) goes into the converter's
   `node_block_list` and stays fp32; the op types of its default `op_block_list` (ops such as
   Upsample, TopK, Range, CumSum) stay fp32 too; every other node computes in fp16, with fp16
   weights (clamped to +-65504) and `Cast` nodes where fp32 meets fp16. The converter knows no op
   by name beyond its lists, so opset-23 `Attention` converts like any other node (its float
   inputs, mask included, become fp16).
3. Three fixes after the converter: it writes fp32 -> fp16 -> fp32 between two blocked nodes,
   which turns an overflowing value into inf, so the second node reads the fp32 tensor; a cast
   into fp16 from a tensor whose measured peak overflows saturates first (`Clip` to +-65504: an
   additive attention mask filled with float32's minimum becomes -65504, not -inf); its casts
   are appended after the graph, so the nodes are sorted again for the ONNX checker.
4. Graph inputs and outputs stay fp32 (`keep_io_types`), so feeding the engine is the same at
   every precision.
5. The graph runs on the gate split; if it misses the fp16 tolerance row, nodes with the largest
   peaks stay fp32 too, at thresholds `fp16_guard.ESCALATION` below the range, then every node.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from edgevl.exporters.fp16_guard import FP16_MAX, MAX_LISTED, THRESHOLDS, guard_reason, peak

FLOAT, FLOAT16 = 1, 10
MASK_INPUT = {"Attention": 3}


def float_tensors(model: "object") -> set[str]:
    """Names of the float32 tensors of `model` (inputs, initializers, intermediates)."""
    import onnx

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    del probe.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(probe)
    names = {vi.name for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
             if vi.type.tensor_type.elem_type == FLOAT}
    return names | {i.name for i in inferred.graph.initializer if i.data_type == FLOAT}


def tensor_peaks(model: "object", feeds: dict[str, np.ndarray], batch: int = 16) -> dict[str, float]:
    """Peak |value| of every float tensor of `model` over `feeds` (ONNX Runtime, CPU)."""
    from onnx import numpy_helper

    from edgevl.compress.ort_graph import session_with_outputs

    floats = float_tensors(model)
    inits = {i.name for i in model.graph.initializer}
    wanted = sorted(t for t in floats if t not in inits)
    sess, names = session_with_outputs(model, wanted)
    peaks: dict[str, float] = {}
    n = next(iter(feeds.values())).shape[0]
    for i in range(0, n, batch):
        outs = sess.run(None, {k: v[i:i + batch] for k, v in feeds.items()})
        for name, value in zip(names, outs):
            peaks[name] = max(peaks.get(name, 0.0), peak(value))
    for init in model.graph.initializer:
        if init.name in floats:
            peaks[init.name] = peak(numpy_helper.to_array(init))
    return peaks


def node_peaks(model: "object", peaks: dict[str, float]) -> dict[str, float]:
    """Node name -> peak over its float inputs (an attention mask left out) and outputs."""
    found = {}
    for node in model.graph.node:
        skip = MASK_INPUT.get(node.op_type)
        touched = [peaks[t] for i, t in enumerate(node.input) if t in peaks and i != skip]
        touched += [peaks[t] for t in node.output if t in peaks]
        if touched:
            found[node.name] = max(touched)
    return found


def convert_fp16(model: "object", keep_fp32: set[str], peaks: dict[str, float]) -> tuple["object", dict]:
    """A copy of `model` computing in fp16 except the nodes named in `keep_fp32` and those of the
    converter's default `op_block_list`; returns it and the counts (casts inserted, saturating
    casts, nodes in fp16 / fp32, the nodes its op types kept fp32)."""
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    # Nodes the converter keeps fp32 by op type; one on integers only (a Range, a Max of sizes)
    # computes no float either way and is not counted.
    floats = float_tensors(model)
    by_op_type = {n.name for n in model.graph.node if n.name not in keep_fp32 and n.op_type in DEFAULT_OP_BLOCK_LIST
                  and any(t in floats for t in (*n.input, *n.output))}
    blocked = set(keep_fp32) | by_op_type
    casts_before = sum(n.op_type == "Cast" for n in model.graph.node)
    graph_floats = {i.name for i in model.graph.input if i.type.tensor_type.elem_type == FLOAT}
    half = convert_float_to_float16(onnx.ModelProto.FromString(model.SerializeToString()), keep_io_types=True,
                                    op_block_list=DEFAULT_OP_BLOCK_LIST, node_block_list=sorted(blocked))
    graph = half.graph

    def cast_to(node: "object") -> int:
        return next((a.i for a in node.attribute if a.name == "to"), 0) if node.op_type == "Cast" else 0

    producer = {o: n for n in graph.node for o in n.output}
    # The converter's casts into fp16 from a blocked node's fp32 output or a graph input.
    to_half = {n.output[0]: n for n in graph.node if cast_to(n) == FLOAT16
               and (n.input[0] in graph_floats or getattr(producer.get(n.input[0]), "name", None) in blocked)}
    # Its casts back to fp32 for a blocked node read fp32 -> fp16 -> fp32 where the producer is
    # blocked too (an overflowing value would become inf) and fp32 -> fp32 from an fp32 weight:
    # the node reads the fp32 tensor instead (a graph output's cast reads it, fp32 -> fp32).
    fp32_weights = {i.name for i in graph.initializer if i.data_type == FLOAT}
    outputs = {o.name for o in graph.output}
    rename = {}
    for node in graph.node:
        source = node.input[0] if node.input and node.input[0] in fp32_weights else None
        source = to_half[node.input[0]].input[0] if node.input and node.input[0] in to_half else source
        if cast_to(node) == FLOAT and source:
            if node.output[0] in outputs:
                node.input[0] = source
            else:
                rename[node.output[0]] = source
    for node in graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
    used = {i for n in graph.node if n.output[0] not in rename for i in n.input} | outputs
    keep = [n for n in graph.node if n.output[0] not in rename and not (n.output[0] in to_half and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(keep)
    # A cast into fp16 from a tensor whose measured peak overflows saturates first.
    saturating = 0
    for node in graph.node:
        out = node.output[0]
        if out in to_half and max(peaks.get(out, 0.0), peaks.get(node.input[0], 0.0)) > FP16_MAX:
            lo, hi = f"{out}__fp16_lo", f"{out}__fp16_hi"
            graph.initializer.extend([numpy_helper.from_array(np.array(-FP16_MAX, np.float32), lo),
                                      numpy_helper.from_array(np.array(FP16_MAX, np.float32), hi)])
            graph.node.append(helper.make_node("Clip", [node.input[0], lo, hi], [f"{out}__saturated"], name=f"{out}__saturate"))
            node.input[0] = f"{out}__saturated"
            saturating += 1
    del graph.value_info[:]
    OnnxModel.graph_topological_sort(graph)
    counts = {"casts": sum(n.op_type == "Cast" for n in graph.node) - casts_before, "saturating_casts": saturating,
              "fp16_nodes": len(model.graph.node) - len(blocked), "fp32_nodes": len(blocked),
              "kept_fp32_by_op_type": sorted(by_op_type)[:MAX_LISTED]}
    return half, counts


def guarded_fp16(
    fp32: "object", feeds: dict[str, np.ndarray], passes_gate: Callable[["object"], Any],
) -> tuple["object", dict]:
    """The fp16 graph with the guard applied (module doc) and the guard's report.
    `passes_gate(model)` returns the gate-split parity result (`.passed`, `.cosine_min`)."""
    peaks = tensor_peaks(fp32, feeds)
    by_node = node_peaks(fp32, peaks)
    result: Optional[Any] = None
    for threshold in THRESHOLDS:
        kept = {n for n, p in by_node.items() if p > threshold} if threshold > 0 else {n.name for n in fp32.graph.node}
        model, counts = convert_fp16(fp32, kept, peaks)
        result = passes_gate(model)
        if result.passed:
            break
    overflow = sorted(n for n, p in by_node.items() if p > FP16_MAX)
    report = {
        "pass": "onnxruntime.transformers.float16.convert_float_to_float16, node_block_list from edgevl's measurement",
        "kept_fp32": sorted(kept)[:MAX_LISTED],
        "kept_fp32_count": len(kept),
        "kept_fp32_ops": sorted({n.op_type for n in fp32.graph.node if n.name in kept}),
        "overflowing_nodes": overflow[:MAX_LISTED],
        "reason": guard_reason(bool(kept), threshold, "node"),
        "gate_cosine_min": result.cosine_min,
        "gate_passed": result.passed,
        **counts,
    }
    return model, report


def ort_fp32_fallbacks(model: "object") -> list[str]:
    """Op types of the fp16 nodes ONNX Runtime's CPU provider computes in fp32 (it has no fp16
    kernel for them and wraps them in inserted Casts), read from its optimised graph."""
    import os
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = path
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(path)
    to_fp32 = {o for n in optimized.graph.node
               if n.op_type == "Cast" and "InsertedPrecisionFreeCast" in n.name
               and any(a.name == "to" and a.i == FLOAT for a in n.attribute) for o in n.output}
    return sorted({n.op_type for n in optimized.graph.node
                   if n.op_type != "Cast" and any(i in to_fp32 for i in n.input)})
