"""Recipe -> Q/DQ ONNX graph, and the graph preparation calibration needs.

Only MatMul (and Gemm, normalised to MatMul first) with a constant 2-D weight is quantised:
  activation --QuantizeLinear(uint8, per tensor)--DequantizeLinear--\
                                                                    MatMul -> float output
  weight (int8 initializer, per output channel) --DequantizeLinear--/
This is the pattern ONNX Runtime's CPU graph optimiser fuses into an integer MatMul
(MatMulIntegerToFloat) and OpenVINO reads as FakeQuantize, so both runtimes run the same file.
The standard `Attention` op (opset 23) is never touched: ORT's own quantizer mistakes it for
its contrib op, and attention in int8 is where accuracy goes first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from edgevl.compress.ort_graph import IR_VERSION, drop_unread_initializers, initializers, insert_before
from edgevl.compress.recipe import QuantRecipe
from edgevl.errors import ExportError


@dataclass(frozen=True)
class LinearNode:
    """A MatMul whose second input is a constant `[K, N]` weight."""

    name: str
    activation: str
    weight: str
    output: str
    in_features: int
    out_features: int


def _onnx():
    import onnx

    return onnx


def strip_value_info(model: "object") -> "object":
    """Drop stored intermediate shapes: the dynamo exporter's are not always what
    onnx's strict shape inference re-derives, which makes ORT's quantizer refuse the model."""
    del model.graph.value_info[:]
    return model


def normalize_gemm(model: "object") -> int:
    """Rewrite `Gemm(x, W[, C])` with constant W (alpha=beta=1, transA=0) as MatMul (+ Add),
    so every linear layer has one form: a `[K, N]` weight, output channels on axis 1."""
    onnx = _onnx()
    from onnx import helper, numpy_helper

    inits = initializers(model)
    count = 0
    nodes = list(model.graph.node)
    new_nodes = []
    for node in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "Gemm"
            or node.input[1] not in inits
            or attrs.get("transA", 0) != 0
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
            replacement = numpy_helper.from_array(np.ascontiguousarray(weight), node.input[1])
            inits[node.input[1]].CopyFrom(replacement)
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + "_mm" if has_bias else node.output[0]
        matmul = helper.make_node("MatMul", [node.input[0], node.input[1]], [mm_out], name=node.name)
        matmul.metadata_props.extend(node.metadata_props)  # keeps the module path for reports
        new_nodes.append(matmul)
        if has_bias:
            new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=node.name + "_bias"))
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    del onnx
    return count


def linear_nodes(model: "object") -> list[LinearNode]:
    """The quantisable layers, in graph order."""
    inits = initializers(model)
    found = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        dims = list(inits[node.input[1]].dims)
        if len(dims) != 2:
            continue
        found.append(LinearNode(node.name, node.input[0], node.input[1], node.output[0], dims[0], dims[1]))
    return found


def prepare(model: "object") -> tuple["object", dict]:
    """The float graph every later step works on (copy): value_info stripped, Gemm -> MatMul,
    every node named."""
    onnx = _onnx()
    model = onnx.ModelProto.FromString(model.SerializeToString())
    strip_value_info(model)
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    gemm = normalize_gemm(model)
    return model, {"gemm_to_matmul": gemm}


def quantize_weight_per_channel(
    weight: np.ndarray, bits: int = 8, qmax: Optional[int] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel (axis 1 of `[K, N]`) quantisation -> (int8 codes, scales).
    `qmax`: the largest |code| (default 2**(bits-1) - 1; 64 keeps int8 saturation-safe, see
    edgevl.compress.config.CPU_ISAS)."""
    qmax = qmax or 2 ** (bits - 1) - 1
    amax = np.abs(weight).max(axis=0)
    scales = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    codes = np.clip(np.round(weight / scales[None, :]), -qmax, qmax).astype(np.int8)
    return codes, scales


def weight_recipe(weight: np.ndarray, bits: int = 8, qmax: Optional[int] = None) -> dict:
    qmax = qmax or 2 ** (bits - 1) - 1
    _, scales = quantize_weight_per_channel(weight, bits, qmax)
    return {"axis": 1, "bits": bits, "qmax": qmax, "symmetric": True, "scales": [float(s) for s in scales]}


def apply_recipe(model: "object", recipe: QuantRecipe) -> tuple["object", dict]:
    """A copy of the prepared float `model` with Q/DQ placed as the recipe says.

    Returns the model and what was done: `{"quantized_linear": n, "float_linear": m, ...}`.
    SmoothQuant factors in the recipe must already be folded into the float graph
    (`fold_smoothing`), because the fold changes the producer of the activation, not the layer.
    """
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = initializers(model)
    by_name = {n.name: n for n in model.graph.node}
    missing = [n for n in recipe.layers if n not in by_name]
    if missing:
        raise ExportError(
            f"quantisation recipe names layers the graph does not have: {', '.join(missing[:5])}; "
            "the recipe was made for another export of this tower, re-run calibration"
        )
    new_inits = []
    quant_act: dict[tuple[str, float, int], str] = {}
    pre: dict[str, list] = {}
    for name, layer in recipe.layers.items():
        node = by_name[name]
        if layer.weight not in inits:
            raise ExportError(f"layer {name!r}: weight {layer.weight!r} is not a constant in the graph")
        weight = numpy_helper.to_array(inits[layer.weight]).astype(np.float32)
        bits = int(layer.weight_q.get("bits", 8))
        scales = np.asarray(layer.weight_q["scales"], np.float32)
        if scales.shape != (weight.shape[1],):
            raise ExportError(
                f"layer {name!r}: recipe has {scales.shape[0]} weight scales, weight has {weight.shape[1]} "
                "output channels; re-run calibration"
            )
        qmax = int(layer.weight_q.get("qmax", 2 ** (bits - 1) - 1))
        codes = np.clip(np.round(weight / scales[None, :]), -qmax, qmax).astype(np.int8)
        wq, ws, wz = f"{layer.weight}_q", f"{layer.weight}_scale", f"{layer.weight}_zp"
        new_inits += [
            numpy_helper.from_array(codes, wq),
            numpy_helper.from_array(scales, ws),
            numpy_helper.from_array(np.zeros_like(scales, dtype=np.int8), wz),
        ]
        nodes = [helper.make_node("DequantizeLinear", [wq, ws, wz], [f"{layer.weight}_dq"], name=f"{name}_w_dq", axis=1)]
        # One QuantizeLinear per (tensor, scale, zero point); each consumer gets its own DQ so
        # ORT's fusion (which wants a DQ with one consumer) sees a clean node unit.
        act = layer.act
        key = (layer.activation, float(act["scale"]), int(act["zero_point"]))
        a_s = f"{name}_a_scale"
        a_z = f"{name}_a_zp"
        new_inits += [
            numpy_helper.from_array(np.asarray(act["scale"], np.float32), a_s),
            numpy_helper.from_array(np.asarray(act["zero_point"], np.uint8), a_z),
        ]
        if key not in quant_act:
            q_out = f"{name}_a_q"
            nodes.append(helper.make_node("QuantizeLinear", [layer.activation, a_s, a_z], [q_out], name=f"{name}_a_quant"))
            quant_act[key] = q_out
        nodes.append(
            helper.make_node("DequantizeLinear", [quant_act[key], a_s, a_z], [f"{name}_a_dq"], name=f"{name}_a_dequant")
        )
        node.input[0] = f"{name}_a_dq"
        node.input[1] = f"{layer.weight}_dq"
        pre[name] = nodes
    insert_before(model, pre)
    # Float weights no longer used by anything are dropped (that is where the size goes).
    drop_unread_initializers(model, new_inits)
    ensure_opset(model)
    del TensorProto
    return model, {
        "quantized_linear": len(recipe.layers),
        "float_linear": len(recipe.float_layers),
        "quantize_nodes": len(quant_act),
    }



def ensure_opset(model: "object") -> None:
    """Refuse opsets without per-channel Q/DQ; cap the IR version at what ONNX Runtime reads."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version < 13:
            raise ExportError(f"per-channel Q/DQ needs opset >= 13; the graph has opset {imp.version}")
    model.ir_version = min(model.ir_version or IR_VERSION, IR_VERSION)
