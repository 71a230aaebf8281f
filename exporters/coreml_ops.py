"""coremltools' converters for edgevl's attention op and for the two aten ops edgevl's towers
trace to that coremltools 9.0 lacks (`new_ones` in transformers' mask code, `chunk` of SigLIP's
packed pooling-head weights), plus `where` with scalar branches: coremltools' MIL `select` takes
its output shape from the two branches only, so transformers' `where(mask, 0.0, min)` over a mask
of symbolic shape became a scalar; the branches are broadcast to the condition's shape first.

Each `edgevl::attention` node of a traced tower becomes ONE iOS18
`scaled_dot_product_attention` MIL op.

Core ML's op has no `scale` input (it always scales by 1/sqrt(head_dim)), so a block whose scale
differs gets its query multiplied by `scale * sqrt(head_dim)` first. The additive mask is clamped
at `MASK_FLOOR`: edgevl's models fill masked positions with the float32 minimum, which is -inf in
fp16, and -inf plus a finite score is still -inf while `0 * -inf` upstream would be NaN; a floor
of -3e4 (the value coremltools itself uses for boolean masks) gives the same softmax (exp(-3e4)
is 0 in both precisions) and stays finite in fp16.
"""

from __future__ import annotations

import math
from typing import Any

SDPA_OP = "scaled_dot_product_attention"
TORCH_OP = "edgevl::attention"
MASK_FLOOR = -3.0e4

_registered = False


def register_attention_converter() -> None:
    """Register the converter with coremltools' torch frontend (once per process)."""
    global _registered
    if _registered:
        return
    from coremltools.converters.mil import Builder as mb

    # `_get_inputs` is what coremltools' own guide to custom-op converters uses to read a node's
    # inputs; its registry is read to leave an existing converter in place.
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op

    def edgevl_attention(context: Any, node: Any) -> None:
        q, k, v, mask, scale = _get_inputs(context, node, expected=5)
        head_dim = q.shape[-1]
        if not isinstance(head_dim, int):
            raise ValueError(f"{TORCH_OP} node {node.name}: the head size must be static, got {head_dim}")
        if scale is None or scale.val is None:
            raise ValueError(f"{TORCH_OP} node {node.name}: the scale must be a constant")
        factor = float(scale.val) * math.sqrt(head_dim)
        if abs(factor - 1.0) > 1e-6:
            q = mb.mul(x=q, y=float(factor), name=f"{node.name}_query_scaled")
        if mask is not None:
            mask = mb.maximum(x=mask, y=MASK_FLOOR, name=f"{node.name}_mask_floor")
            context.add(
                mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=mask, name=node.name)
            )
        else:
            context.add(mb.scaled_dot_product_attention(query=q, key=k, value=v, name=node.name))

    register_torch_op(edgevl_attention, torch_alias=[TORCH_OP], override=False)
    _register_missing_aten(mb, _get_inputs, register_torch_op)
    _registered = True


def _register_missing_aten(mb: Any, get_inputs: Any, register: Any) -> None:
    """`new_ones(self, size, dtype, ...)` and `chunk(x, chunks, dim)`, where coremltools has none."""
    from coremltools.converters.mil.frontend.torch.ops import NUM_TO_DTYPE_STRING
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    def new_ones(context: Any, node: Any) -> None:
        inputs = get_inputs(context, node, min_expected=2)
        size, dtype = inputs[1], inputs[2] if len(inputs) > 2 else None
        if isinstance(size, list):
            size = mb.concat(values=size, axis=0)
        if size.val is not None and len(size.val) == 0:
            ones = mb.const(val=1.0)
        else:
            ones = mb.fill(shape=size, value=1.0)
        if dtype is not None and dtype.val is not None:
            ones = mb.cast(x=ones, dtype=NUM_TO_DTYPE_STRING[int(dtype.val)], name=node.name)
        context.add(ones, node.name)

    def chunk(context: Any, node: Any) -> None:
        x, chunks, dim = get_inputs(context, node, expected=3)
        dim = int(dim.val) % x.rank
        total, count = x.shape[dim], int(chunks.val)
        if not isinstance(total, int):
            raise ValueError(f"chunk node {node.name}: the split axis must be static, got {total}")
        size = -(-total // count)
        sizes = [size] * (total // size) + ([total % size] if total % size else [])
        context.add(mb.split(x=x, split_sizes=sizes, axis=dim, name=node.name), torch_name=node.name)

    for name, func in (("new_ones", new_ones), ("chunk", chunk)):
        if _TORCH_OPS_REGISTRY.get_func(name) is None:
            func.__name__ = name
            register(func)
    _register_where(mb, get_inputs, register, _TORCH_OPS_REGISTRY.get_func("where"))


def _register_where(mb: Any, get_inputs: Any, register: Any, original: Any) -> None:
    from coremltools.converters.mil.frontend.torch.ops import promote_input_dtypes
    from coremltools.converters.mil.mil import types

    def where(context: Any, node: Any) -> None:
        inputs = get_inputs(context, node)
        if len(inputs) != 3:
            original(context, node)
            return
        cond, a, b = inputs
        a, b = promote_input_dtypes([a, b])
        if not types.is_bool(cond.dtype):
            cond = mb.cast(x=cond, dtype="bool")
        if max(a.rank, b.rank) < cond.rank:
            # Broadcast branch `a` to the condition's shape (fill_like: iOS17+, the target is
            # iOS18); `select` then broadcasts `b` against it.
            if a.rank == 0 and a.val is not None:
                a = mb.fill_like(ref_tensor=cond, value=a.val)
            else:
                zeros = mb.cast(x=mb.fill_like(ref_tensor=cond, value=0.0), dtype=types.builtin_to_string(a.dtype))
                a = mb.add(x=zeros, y=a)
        context.add(mb.select(cond=cond, a=a, b=b, name=node.name))

    register(where, override=True)
