"""edgevl's fp16 pass for TensorRT: a strongly typed fp16 graph, with the nodes that must stay
fp32 found by measurement.

nvidia-modelopt's `modelopt.onnx.autocast` does this job in NVIDIA's tool chain, but installing
`nvidia-modelopt[onnx]` replaces onnx and onnxruntime with older builds (onnxruntime-gpu), so
edgevl has its own pass:

1. The fp32 graph runs on ONNX Runtime over the gate split (never the parity split) with every
   float tensor as an output; each node's peak |value| over its float inputs and outputs is
   recorded (an attention mask input is left out: the pass casts it with saturation, below).
2. Every node whose peak exceeds fp16's range (65504) stays fp32; every other node computes in
   fp16: fp16 weights, fp16 activations, `Cast` nodes where an fp32 node meets an fp16 one. A
   cast into fp16 from a tensor whose measured peak overflows fp16 saturates first (`Clip` to
   +-65504): an additive attention mask filled with float32's minimum becomes -65504, not -inf.
3. Graph inputs and outputs stay fp32 (a Cast right after each float input and before each
   output), so feeding the engine is the same at every precision.
4. The graph runs on the gate split; if it misses the fp16 tolerance row, nodes with the largest
   peaks stay fp32 too, at thresholds `fp16_guard.ESCALATION` below the range, then every node.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from edgevl.exporters.fp16_guard import FP16_MAX, MAX_LISTED, THRESHOLDS, guard_reason, peak

FLOAT, FLOAT16 = 1, 10
# Inputs that ONNX types as float32 only, whatever the node computes in.
FP32_ONLY_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}
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
    """A copy of `model` computing in fp16 except the nodes named in `keep_fp32`; returns it and
    the counts (casts inserted, saturating casts, nodes in fp16 / fp32)."""
    import onnx
    from onnx import helper, numpy_helper

    floats = float_tensors(model)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: i for i in model.graph.initializer}
    half: set[str] = set()  # float tensors that are fp16 in the new graph
    casts: dict[tuple[str, int], str] = {}
    new_inits: dict[str, "object"] = {}
    nodes: list = []
    counts = {"casts": 0, "saturating_casts": 0, "fp16_nodes": 0, "fp32_nodes": 0}

    def cast(tensor: str, to: int) -> str:
        key = (tensor, to)
        if key in casts:
            return casts[key]
        if to == FLOAT and tensor in inits:
            return tensor
        if to == FLOAT16 and tensor in inits:
            name = f"{tensor}__fp16"
            if name not in new_inits:
                value = np.clip(numpy_helper.to_array(inits[tensor]), -FP16_MAX, FP16_MAX).astype(np.float16)
                new_inits[name] = numpy_helper.from_array(value, name)
            casts[key] = name
            return name
        source = tensor
        if to == FLOAT16 and peaks.get(tensor, 0.0) > FP16_MAX:
            lo, hi = f"{tensor}__fp16_lo", f"{tensor}__fp16_hi"
            new_inits[lo] = numpy_helper.from_array(np.array(-FP16_MAX, np.float32), lo)
            new_inits[hi] = numpy_helper.from_array(np.array(FP16_MAX, np.float32), hi)
            source = f"{tensor}__saturated"
            nodes.append(helper.make_node("Clip", [tensor, lo, hi], [source], name=f"{tensor}__saturate"))
            counts["saturating_casts"] += 1
        out = f"{tensor}__to_{'fp16' if to == FLOAT16 else 'fp32'}"
        nodes.append(helper.make_node("Cast", [source], [out], to=to, name=out))
        counts["casts"] += 1
        casts[key] = out
        return out

    for node in model.graph.node:
        fp16 = node.name not in keep_fp32
        counts["fp16_nodes" if fp16 else "fp32_nodes"] += 1
        fixed = FP32_ONLY_INPUTS.get(node.op_type, ())
        for i, name in enumerate(node.input):
            if name not in floats:
                continue
            want = FLOAT16 if fp16 and i not in fixed else FLOAT
            is_half = name in half
            if (want == FLOAT16) != is_half or (want == FLOAT16 and name in inits):
                node.input[i] = cast(name, want)
        if fp16:
            half.update(o for o in node.output if o in floats)
            for attr in node.attribute:
                if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
                    attr.i = FLOAT16
                if attr.name == "value" and attr.t.data_type == FLOAT:
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))
        nodes.append(node)
    for out in model.graph.output:
        if out.name in half:
            inner = f"{out.name}__fp16_out"
            for node in nodes:
                node.output[:] = [inner if o == out.name else o for o in node.output]
                node.input[:] = [inner if i == out.name else i for i in node.input]
            nodes.append(helper.make_node("Cast", [inner], [out.name], to=FLOAT, name=f"{out.name}__to_fp32_out"))
            counts["casts"] += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]
    used = {i for n in nodes for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep + [v for k, v in new_inits.items() if k in used])
    return model, counts


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
        "pass": "edgevl (exporters/tensorrt_fp16.py)",
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
