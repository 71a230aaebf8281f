"""The two x86 int8 dot products, simulated in numpy, and the check that an int8 ONNX graph gives
the same numbers under both.

CPUs with AVX512-VNNI, AVX-VNNI or AMX accumulate u8 x s8 products exactly in int32. CPUs
without VNNI (AVX2, AVX-512 without VNNI) use `vpmaddubsw`: adjacent pairs of u8 x s8 products
are added into int16 with saturation before the int32 accumulation (OpenVINO's "Saturation
(overflow) issue", ONNX Runtime's `reduce_range`). An artifact built for `cpu_isa="any"` keeps
|w| <= 64, so no pair can exceed 2 * 255 * 64 = 32640 and both semantics agree; this module
proves it from the weights and checks it on real activations, so the verdict of the machine
that builds holds on every x86 CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from edgevl.compress.config import INT16_MAX, UINT8_MAX
from edgevl.compress.ort_graph import consumers, initializers, producers, session_with_outputs

# Integer GEMM ops and the input index of their int8 weight.
_INT8_GEMMS = {"MatMulInteger": 1, "QAttention": 1, "DynamicQuantizeMatMul": 1, "MatMulIntegerToFloat": 1,
               "QLinearMatMul": 3, "QLinearConv": 3}


def int8_dot(a_u8: np.ndarray, b_s8: np.ndarray, semantics: str) -> np.ndarray:
    """`a_u8 [M, K] @ b_s8 [K, N]` in int32, as a CPU computes it.

    semantics "exact": int32 accumulation (VNNI, AMX). "int16_pairs": products of adjacent K
    pairs summed into int16 with saturation, then accumulated in int32 (vpmaddubsw)."""
    a = a_u8.astype(np.int32)
    b = b_s8.astype(np.int32)
    if semantics == "exact":
        return a @ b
    if semantics != "int16_pairs":
        raise ValueError(f"unknown int8 dot-product semantics {semantics!r}; use 'exact' or 'int16_pairs'")
    k = a.shape[1]
    if k % 2:
        a = np.pad(a, ((0, 0), (0, 1)))
        b = np.pad(b, ((0, 1), (0, 0)))
    out = np.zeros((a.shape[0], b.shape[1]), np.int64)
    for j in range(0, a.shape[1], 2):
        pair = a[:, j : j + 1] * b[j] + a[:, j + 1 : j + 2] * b[j + 1]
        out += np.clip(pair, -INT16_MAX - 1, INT16_MAX)
    return out.astype(np.int32)


def worst_pair_sum(b_s8: np.ndarray) -> int:
    """The largest |a0*b0 + a1*b1| any u8 activations can reach with these weights [K, N]
    (pairs along K, as the kernels pack them)."""
    b = np.abs(b_s8.astype(np.int64))
    if b.shape[0] % 2:
        b = np.pad(b, ((0, 1), (0, 0)))
    return int(UINT8_MAX * (b[0::2] + b[1::2]).max()) if b.size else 0


@dataclass
class SaturationReport:
    """Whether an int8 graph computes the same on CPUs with and without VNNI."""

    int8_gemms: int = 0
    worst_pair_sum: int = 0
    safe_by_weights: bool = True  # every possible pair fits int16
    outputs_checked: int = 0  # on the layers the weights do not prove safe
    outputs_differing: int = 0  # under int16_pairs vs exact, on real activations
    unsafe_layers: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "int8_gemms": self.int8_gemms,
            "worst_pair_sum": self.worst_pair_sum,
            "int16_limit": INT16_MAX,
            "safe_by_weights": self.safe_by_weights,
            "outputs_checked": self.outputs_checked,
            "outputs_differing_without_vnni": self.outputs_differing,
            "unsafe_layers": self.unsafe_layers[:20],
        }


def _weights(model: "object") -> list[tuple[str, str, np.ndarray]]:
    """(node name, activation input, int8 weight as [K, N]) of every integer GEMM."""
    from onnx import numpy_helper

    inits = initializers(model)
    out = []
    for node in model.graph.node:
        index = _INT8_GEMMS.get(node.op_type)
        if index is None or len(node.input) <= index or node.input[index] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[index]])
        if w.dtype != np.int8:
            continue
        if node.op_type == "QLinearConv":  # [M, C/g, kh, kw]: the dot product runs over C/g*kh*kw
            w = w.reshape(w.shape[0], -1).T
        out.append((node.name, node.input[0], w.reshape(w.shape[0], -1)))
    return out


def _dequantized_conv_weights(model: "object") -> list[tuple[str, np.ndarray]]:
    """int8 weights of a Q/DQ graph (DequantizeLinear of an int8 initializer feeding a Conv or
    MatMul), as [K, N]: ONNX Runtime fuses these into its integer kernels."""
    from onnx import numpy_helper

    inits = initializers(model)
    readers = consumers(model)
    out = []
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        if not {n.op_type for n in readers.get(node.output[0], [])} & {"Conv", "MatMul", "Gemm"}:
            continue
        w = numpy_helper.to_array(inits[node.input[0]])
        if w.dtype != np.int8:
            continue
        out.append((node.name, w.reshape(w.shape[0], -1).T if w.ndim == 4 else w.reshape(w.shape[0], -1)))
    return out


def check_saturation(model: "object", feeds: Optional[list[dict[str, np.ndarray]]] = None, rows: int = 64) -> SaturationReport:
    """Prove from the weights that the int8 graph computes the same under both dot products,
    and for the `MatMulInteger` layers the proof does not cover, compare both on the real
    activations of `feeds` (a proven layer cannot differ, so simulating it would only repeat the
    proof). `rows`: activation rows per layer compared (the first of each feed, up to this many)."""
    report = SaturationReport()
    gemms = _weights(model)
    weights = [(name, w) for name, _, w in gemms] + _dequantized_conv_weights(model)
    report.int8_gemms = len(weights)
    for name, w in weights:
        worst = worst_pair_sum(w)
        report.worst_pair_sum = max(report.worst_pair_sum, worst)
        if worst > INT16_MAX:
            report.safe_by_weights = False
            report.unsafe_layers.append(name)
    unproven = [g for g in gemms if g[0] in set(report.unsafe_layers)]
    if feeds and unproven:
        _check_on_activations(model, unproven, feeds, rows, report)
    return report


def _check_on_activations(
    model: "object", gemms: list[tuple[str, str, np.ndarray]], feeds: list[dict[str, np.ndarray]], rows: int,
    report: SaturationReport,
) -> None:
    """Compare both semantics on the u8 activations the graph really feeds its `MatMulInteger`
    layers (read from the graph at run time)."""
    made_by = {t: n.op_type for t, n in producers(model).items()}
    todo = [(name, act, w) for name, act, w in gemms if made_by.get(act) == "DynamicQuantizeLinear"]
    if not todo:
        return
    sess, names = session_with_outputs(model, [act for _, act, _ in todo])
    for feed in feeds:
        outs = dict(zip(names, sess.run(None, feed)))
        for _, act, w in todo:
            a = outs[act].reshape(-1, w.shape[0])[:rows]
            exact = int8_dot(a, w, "exact")
            paired = int8_dot(a, w, "int16_pairs")
            report.outputs_checked += exact.size
            report.outputs_differing += int(np.count_nonzero(exact != paired))
