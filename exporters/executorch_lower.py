"""One tower to an ExecuTorch program: `torch.export`, attention decomposed for XNNPACK, PT2E int8,
`to_edge_transform_and_lower` with the XNNPACK partitioner, and what the delegate took.

Attention: edgevl's op (`torch.ops.edgevl.attention`) has no ExecuTorch kernel, so each block is
decomposed into batched matmuls and a last-axis softmax (`attention_as_bmm`), ops XNNPACK takes.
`torch.matmul` on 4-D tensors is avoided on purpose: its decomposition adds `expand_copy` nodes
the partitioner leaves on portable kernels, and `F.scaled_dot_product_attention` decomposes to a
"safe softmax" (eq / any / where) that also stays portable. XNNPACK's own SDPA fusion
(`ConvertToSDPAPass`) matches only a 2-D float mask, which CLIP-style towers never have (no mask
in the image tower, a 4-D padding mask in the text tower), so no block becomes one SDPA op; a
block counts as fused when its compute (bmm, softmax, scale, mask add) runs inside XNNPACK.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections import Counter
from typing import Any, Iterator, Optional, Sequence

from edgevl.models.spec import TowerSpec

# The upper bound of a dynamic batch: ExecuTorch plans activation memory for the largest shape.
DYNAMIC_BATCH_MAX = 16
# Nodes that only reshape or compute sizes: on portable kernels they split a delegated block,
# they do not run its arithmetic.
SHAPE_ONLY = ("view_copy", "expand_copy", "sym_size", "mul", "_assert_scalar", "sym_constrain_range")


def attention_as_bmm(q, k, v, mask, scale):  # noqa: ANN001 - a decomposition, traced by torch.export
    """edgevl's attention as bmm / softmax(-1) / bmm on [batch * heads, seq, dim] views."""
    import torch

    b, h, s, d = q.shape
    sk = k.shape[2]
    scores = torch.bmm(q.reshape(b * h, s, d), k.reshape(b * h, sk, d).transpose(1, 2)) * scale
    if mask is not None:
        scores = (scores.reshape(b, h, s, sk) + mask).reshape(b * h, s, sk)
    out = torch.bmm(torch.softmax(scores, dim=-1), v.reshape(b * h, sk, v.shape[-1]))
    return out.reshape(b, h, s, v.shape[-1])


def example_and_shapes(tower: TowerSpec, context: int, static: Optional[dict[str, int]]) -> tuple[dict, Optional[dict], dict]:
    """(example inputs at the sizes to trace, torch.export dynamic_shapes or None, the shape
    record for the manifest: each axis's size or its range)."""
    import torch

    static = static or {}
    examples = tower.examples_at(static)
    dims: dict[str, Any] = {}
    spec: dict[str, dict[int, Any]] = {}
    record: dict[str, list] = {}
    bounds = {"batch": DYNAMIC_BATCH_MAX, "seq": context}
    for sig in tower.inputs:
        axes, shown = {}, []
        for axis, size in enumerate(sig.shape):
            if isinstance(size, str) and size not in static:
                dims.setdefault(size, torch.export.Dim(size, min=1, max=bounds.get(size, 4096)))
                axes[axis] = dims[size]
                shown.append(f"{size} 1..{bounds.get(size, 4096)}")
            else:
                shown.append(int(static[size]) if isinstance(size, str) else int(size))
        spec[sig.name] = axes
        record[sig.name] = shown
    return examples, (spec if dims else None), record


# Activation observers the int8 gate chooses between (`quantize_pt2e`'s `observer`): XNNPACK's
# default histogram (the range that minimises the calibration data's rounding error, clipping its
# tails) and min-max (the whole calibrated range, coarser steps, nothing seen in calibration clipped).
ACTIVATION_OBSERVERS = ("histogram", "minmax")


def quantize_pt2e(module: Any, examples: dict, dynamic: Optional[dict], calib_feeds: list[dict],
                  float_modules: Sequence[str] = (), observer: str = "histogram") -> tuple[Any, int]:
    """PT2E int8 with XNNPACK's quantizer (symmetric per-channel weights, per-tensor activations
    observed by `observer`, one of ACTIVATION_OBSERVERS),
    calibrated on `calib_feeds`, the ops of `float_modules` (module paths) left float; returns
    (the converted module, how many weighted ops it quantized)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True)
    if observer == "minmax":
        from torchao.quantization.pt2e import MinMaxObserver

        act = dataclasses.replace(config.input_activation,
                                  observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
        config = dataclasses.replace(config, input_activation=act, output_activation=act)
    elif observer != "histogram":
        raise ValueError(f"unknown activation observer {observer!r}; choose from {', '.join(ACTIVATION_OBSERVERS)}")
    quantizer = _quantizer(float_modules).set_global(config)
    with torch.no_grad():
        graph = torch.export.export(module, (), kwargs=examples, dynamic_shapes=dynamic).module()
        prepared = _integer_constants_back(prepare_pt2e(graph, quantizer))
        for feeds in calib_feeds:
            # Token ids as int64: the towers index with them.
            prepared(**{k: torch.from_numpy(v.astype("int64") if v.dtype.kind in "iu" else v) for k, v in feeds.items()})
        converted = convert_pt2e(prepared)
    weighted = sum(
        1 for n in converted.graph.nodes
        if n.op == "call_function" and str(n.target).startswith(("aten.linear", "aten.conv"))
        and any("dequantize" in str(a.target) for a in n.all_input_nodes[1:2] if hasattr(a, "target"))
    )
    return converted, weighted


def _quantizer(float_modules: Sequence[str] = ()) -> Any:
    """XNNPACK's quantizer with two changes to what it annotates, leaving the ops of
    `float_modules` (module paths; the gate's float layers) unannotated, hence float.

    A convolution followed by hardtanh (ReLU6 is hardtanh(0, 6)) is annotated as one op. Stock,
    only conv -> relu is: a hardtanh shares its input's observer, so the convolution's output is
    quantized over its raw range and the [0, 6] left after the clamp gets a few of the 256
    levels. Fused, the observer sits after the clamp; XNNPACK's FuseActivationPass folds the
    clamp into the convolution as its output min / max.

    Tensor adds (residual connections) stay float: per-tensor int8 on a transformer's residual
    stream, whose few outlier channels set the scale, flattens every other channel before the
    LayerNorm that reads it. docs/executorch.md has the measured effect on the default model."""
    import torch
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer_utils as qu
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    from edgevl.compress.torch_conv import module_path

    clamps = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
    skip = set(float_modules)

    def quantizable(node: Any) -> bool:
        return module_path(node) not in skip

    class EdgevlXnnpackQuantizer(XNNPACKQuantizer):
        def annotate(self, model: Any) -> Any:
            config = self.global_config
            for node in model.graph.nodes if config is not None else []:
                if node.op == "call_function" and node.target == torch.ops.aten.add.Tensor:
                    node.meta[qu.Q_ANNOTATION_KEY] = qu.QuantizationAnnotation(_annotated=True)
            for clamp in list(model.graph.nodes) if config is not None else []:
                conv = clamp.args[0] if clamp.op == "call_function" and clamp.target in clamps else None
                if conv is None or not qu._is_conv_node(conv) or len(conv.users) != 1 or not quantizable(conv):
                    continue
                inputs = {conv.args[0]: qu.get_input_act_qspec(config), conv.args[1]: qu.get_weight_qspec(config)}
                partition = [clamp, conv, conv.args[1]]
                bias = conv.args[2] if len(conv.args) > 2 else None
                if isinstance(bias, torch.fx.Node):
                    inputs[bias] = qu.get_bias_qspec(config)
                    partition.append(bias)
                if qu._is_annotated(partition):
                    continue
                conv.meta[qu.Q_ANNOTATION_KEY] = qu.QuantizationAnnotation(input_qspec_map=inputs, _annotated=True)
                clamp.meta[qu.Q_ANNOTATION_KEY] = qu.QuantizationAnnotation(
                    output_qspec=qu.get_output_act_qspec(config), _annotated=True)
                qu._mark_nodes_as_annotated(partition)
            return super().annotate(model)

    return EdgevlXnnpackQuantizer().set_filter_function(quantizable)


def _integer_constants_back(prepared: Any) -> Any:
    """PT2E preparation turns the scalar operand of every add / mul into a float tensor constant,
    which makes integer arithmetic (the position indices of transformers' mask building) float;
    such a constant next to an integer tensor gets the integer dtype back."""
    import torch

    for node in prepared.graph.nodes:
        if node.op != "call_function" or len(node.args) != 2:
            continue
        a, b = node.args
        if not (hasattr(a, "op") and hasattr(b, "op") and b.op == "get_attr"):
            continue
        val = a.meta.get("val")
        if isinstance(val, torch.Tensor) and not val.dtype.is_floating_point:
            const = getattr(prepared, b.target)
            if const.is_floating_point() and torch.equal(const, const.round()):
                setattr(prepared, b.target, const.to(val.dtype))
    return prepared


def weighted_op_count(module: Any, examples: dict) -> int:
    """Linear and convolution ops in the exported float tower (what int8 could quantize)."""
    import torch

    with torch.no_grad():
        ep = torch.export.export(module, (), kwargs=examples)
    return sum(1 for n in ep.graph.nodes if n.op == "call_function" and str(n.target).startswith(("aten.linear", "aten.conv")))


def lower(module: Any, examples: dict, dynamic: Optional[dict]) -> tuple[Any, dict]:
    """Export, decompose attention, lower to XNNPACK; returns (ExecuTorch program, lowering report)."""
    import executorch.kernels.quantized  # noqa: F401  (out variants of ops the delegate leaves)
    import torch
    from executorch.backends.xnnpack._passes import XNNPACKRemoveCloneOpsTransform
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from edgevl.ops.attention import attention_blocks  # also registers torch.ops.edgevl.attention

    with torch.no_grad(), _no_eager_conv_backends():
        ep = torch.export.export(module, (), kwargs=examples, dynamic_shapes=dynamic)
        table = torch.export.default_decompositions()
        table[torch.ops.edgevl.attention.default] = attention_as_bmm
        ep = ep.run_decompositions(table)
        blocks = _block_names(ep.graph_module, attention_blocks(module))
        # XNNPACK drops identity clones inside each partition; dropped before partitioning instead,
        # so a clone on a partition's edge cannot leave that partition returning one tensor twice.
        edge = to_edge_transform_and_lower(ep, transform_passes=[XNNPACKRemoveCloneOpsTransform()],
                                           partitioner=[XnnpackPartitioner()])
        report = _delegation_report(edge.exported_program().graph_module, blocks)
        program = edge.to_executorch()
        _check_bounds(program.exported_program(), dynamic)
        return program, report


@contextlib.contextmanager
def _no_eager_conv_backends() -> Iterator[None]:
    """mkldnn and nnpack off. Tracing a convolution asks which eager CPU backend would run it,
    and their heuristics test `batch >= 16`: on a symbolic batch that records the guard
    `batch < 16`, which narrows the program's planned batch to 1..15. The XNNPACK program never
    runs those backends."""
    import torch

    with warnings.catch_warnings():
        # Setting mkldnn's flags also sets its TF32 flag, which warns on builds without Intel GPUs.
        warnings.filterwarnings("ignore", message=".*TF32 acceleration on top of oneDNN.*")
        with torch.backends.mkldnn.flags(enabled=False), torch.backends.nnpack.flags(enabled=False):
            yield


def _check_bounds(program: Any, dynamic: Optional[dict]) -> None:
    """Refuse a program whose planned input sizes (the upper bounds ExecuTorch allocates for)
    end smaller than asked, as a guard recorded while tracing makes them: it would refuse sizes
    the manifest promises."""
    for node in program.graph_module.graph.nodes:
        axes = (dynamic or {}).get(node.name) if node.op == "placeholder" else None
        planned = getattr(node.meta.get("spec"), "shape", None)
        for axis, dim in (axes or {}).items() if planned is not None else ():
            if int(planned[axis]) < dim.max:
                raise RuntimeError(f"the lowering narrowed {dim.__name__} of {node.name} to at most "
                                   f"{int(planned[axis])} (asked 1..{dim.max}); use --static-shapes")


def _origin(node: Any) -> Optional[str]:
    """The edgevl attention node a decomposed node came from (torch's from_node provenance)."""
    stack = list(node.meta.get("from_node") or [])
    while stack:
        src = stack.pop()
        if "edgevl.attention" in str(src.target):
            return src.name
        stack.extend(getattr(src, "from_node", None) or [])
    return None


def _block_names(gm: Any, known: Sequence[str]) -> dict[str, str]:
    """attention node name -> the module path of its block. The path is the innermost module on
    the node's nn_module_stack when that is one of the `known` blocks (`attention_blocks`) and no
    other attention node has it; a token-reduced tower runs its blocks' attention from the encoder
    loop (`edgevl.compress.tokens`), so its nodes name the encoder instead: those take the known
    blocks left, in graph order (the order the layers run)."""
    stacked: dict[str, str] = {}
    for node in gm.graph.nodes:
        origin = _origin(node) if node.op == "call_function" else None
        if origin and origin not in stacked:
            stack = node.meta.get("nn_module_stack") or {}
            stacked[origin] = list(stack.values())[-1][0] if stack else origin
    counts = Counter(stacked.values())
    names = {o: path for o, path in stacked.items() if path in known and counts[path] == 1}
    unnamed = [o for o in stacked if o not in names]
    left = [b for b in known if b not in names.values()]
    if len(left) == len(unnamed):
        names.update(zip(unnamed, left))
    else:  # not matched one to one: keep the stack's paths, numbered where they repeat
        seen: Counter = Counter()
        for o in unnamed:
            seen[stacked[o]] += 1
            names[o] = stacked[o] if counts[stacked[o]] == 1 else f"{stacked[o]}#{seen[stacked[o]]}"
    return names


def _op_name(node: Any) -> str:
    return getattr(node.target, "__name__", str(node.target)).replace("aten.", "").split(".")[0]


def _delegation_report(gm: Any, blocks: dict[str, str]) -> dict:
    """Delegated vs portable nodes of the lowered graph, and per attention block where its nodes
    ran: "xnnpack" (every node in the delegate), "xnnpack, split by portable reshapes" (the
    arithmetic delegated, reshape nodes portable) or "portable" (arithmetic on portable kernels)."""
    delegated = portable = delegate_calls = 0
    portable_ops: Counter = Counter()
    per_block: dict[str, Counter] = {name: Counter() for name in blocks}
    for name, child in gm.named_children():
        if name.startswith("lowered_module"):
            delegated += sum(1 for n in child.original_module.graph.nodes if n.op == "call_function")
    for node in gm.graph.nodes:
        if node.op != "call_function" or "getitem" in str(node.target):
            continue
        if "executorch_call_delegate" in str(node.target):
            delegate_calls += 1
            continue
        portable += 1
        portable_ops[_op_name(node)] += 1
        origin = _origin(node)
        if origin is not None:
            per_block.setdefault(origin, Counter())[_op_name(node)] += 1
    lowering = {}
    for origin, ops in per_block.items():
        arithmetic = {op: c for op, c in ops.items() if op not in SHAPE_ONLY}
        lowering[blocks.get(origin, origin)] = {
            "lowered_to": "portable" if arithmetic else ("xnnpack, split by portable reshapes" if ops else "xnnpack"),
            "portable_nodes": dict(sorted(ops.items())),
        }
    return {"delegated_nodes": delegated, "portable_nodes": portable, "delegate_calls": delegate_calls,
            "portable_ops": dict(sorted(portable_ops.items())), "attention": lowering, "sdpa_ops": 0}
