"""numpy kernels for the MIL ops of edgevl's Core ML exports, as coremltools' op definitions
(coremltools/converters/mil/mil/ops/defs) specify them: tensor, elementwise and reduction ops.
Neural-network ops (conv, norms, attention) and the compression ops are in `mil_nn`.

Each kernel takes the op's resolved inputs by name (float16 values already widened to float32:
the interpreter rounds each op's OUTPUT to the dtype the program declares for it, which is where
Core ML's fp16 compute loses precision) and returns a numpy value or a tuple of them.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

Kernel = Callable[[dict[str, Any]], Any]

_DTYPES = {
    "fp16": np.float16, "fp32": np.float32, "int32": np.int32, "int16": np.int16, "int8": np.int8,
    "uint16": np.uint16, "uint8": np.uint8, "bool": np.bool_,
}


def _axes(a: dict[str, Any], key: str = "axes") -> Any:
    value = a.get(key)
    return None if value is None else tuple(int(v) for v in np.atleast_1d(value))


def _cast(a: dict[str, Any]) -> np.ndarray:
    dtype = _DTYPES.get(str(a["dtype"]))
    if dtype is None:
        raise NotImplementedError(f"cast to {a['dtype']!r}")
    x = np.asarray(a["x"])
    if np.issubdtype(dtype, np.integer) and np.issubdtype(x.dtype, np.floating):
        x = np.trunc(x)  # float -> int truncates toward zero, as numpy's astype does
    return x.astype(dtype)


def _reshape(a: dict[str, Any]) -> np.ndarray:
    x, shape = np.asarray(a["x"]), [int(s) for s in np.atleast_1d(a["shape"])]
    # iOS17+: 0 copies the input's size on that axis; -1 is inferred.
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _slice_by_index(a: dict[str, Any]) -> np.ndarray:
    from coremltools.converters.mil.mil.ops.defs._utils import get_squeeze_axes, solve_slice_by_index_slice

    x = np.asarray(a["x"])
    params = [a.get(k) for k in ("stride", "begin_mask", "end_mask", "squeeze_mask")]
    slices = solve_slice_by_index_slice(x.shape, a["begin"], a["end"], *params)
    out = x[slices]
    squeeze = get_squeeze_axes(a.get("squeeze_mask"), x.ndim)
    return np.squeeze(out, axis=tuple(squeeze)) if squeeze else out


def _slice_by_size(a: dict[str, Any]) -> np.ndarray:
    x = np.asarray(a["x"])
    begin = [int(b) for b in a["begin"]]
    size = [int(s) for s in a["size"]]
    return x[tuple(slice(b, x.shape[i] if s == -1 else b + s) for i, (b, s) in enumerate(zip(begin, size)))]


def _gather(a: dict[str, Any]) -> np.ndarray:
    x, indices = np.asarray(a["x"]), np.asarray(a["indices"]).astype(np.int64)
    axis, batch_dims = int(a.get("axis", 0)), int(a.get("batch_dims", 0))
    if batch_dims:
        raise NotImplementedError("gather with batch_dims > 0")
    return np.take(x, indices, axis=axis)


def _gather_along_axis(a: dict[str, Any]) -> np.ndarray:
    x, indices = np.asarray(a["x"]), np.asarray(a["indices"]).astype(np.int64)
    axis = int(a.get("axis", 0))
    indices = np.where(indices < 0, indices + x.shape[axis], indices)
    return np.take_along_axis(x, indices, axis=axis)


def _gather_nd(a: dict[str, Any]) -> np.ndarray:
    x, indices = np.asarray(a["x"]), np.asarray(a["indices"]).astype(np.int64)
    if int(a.get("batch_dims", 0)):
        raise NotImplementedError("gather_nd with batch_dims > 0")
    return x[tuple(np.moveaxis(indices, -1, 0))]


def _concat(a: dict[str, Any]) -> np.ndarray:
    values = [np.atleast_1d(np.asarray(v)) for v in a["values"]]
    if a.get("interleave"):
        raise NotImplementedError("concat with interleave=True")
    return np.concatenate(values, axis=int(a["axis"]))


def _split(a: dict[str, Any]) -> tuple:
    x, axis = np.asarray(a["x"]), int(a["axis"])
    if a.get("split_sizes") is not None:
        bounds = np.cumsum([int(s) for s in a["split_sizes"]])[:-1]
        return tuple(np.split(x, bounds, axis=axis))
    return tuple(np.split(x, int(a["num_splits"]), axis=axis))


def _squeeze(a: dict[str, Any]) -> np.ndarray:
    axes = _axes(a)
    return np.squeeze(a["x"], axis=axes) if axes else np.squeeze(a["x"])


def _pad(a: dict[str, Any]) -> np.ndarray:
    x, pad = np.asarray(a["x"]), [int(p) for p in a["pad"]]
    widths = [(0, 0)] * (x.ndim - len(pad) // 2) + [(pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)]
    mode = str(a.get("mode", "constant"))
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=a.get("constant_val", 0.0))
    return np.pad(x, widths, mode="edge" if mode == "replicate" else "reflect")


def _clip(a: dict[str, Any]) -> np.ndarray:
    return np.minimum(np.maximum(a["x"], a["alpha"]), a["beta"])


def _reduce(fn: Callable[..., np.ndarray]) -> Kernel:
    def kernel(a: dict[str, Any]) -> np.ndarray:
        return fn(np.asarray(a["x"]), axis=_axes(a), keepdims=bool(a.get("keep_dims", False)))

    return kernel


def _reduce_arg(fn: Callable[..., np.ndarray]) -> Kernel:
    """reduce_argmax / reduce_argmin: one axis, int32 indices (the first on ties, as numpy)."""
    def kernel(a: dict[str, Any]) -> np.ndarray:
        axis = int(a.get("axis", -1))
        return fn(np.asarray(a["x"]), axis=axis, keepdims=bool(a.get("keep_dims", False))).astype(np.int32)

    return kernel


def _topk(a: dict[str, Any]) -> tuple:
    """MIL topk: the k largest (smallest with `ascending`) along `axis`, sorted, and their int32
    indices; ties keep the lower index first (a stable sort)."""
    x, k, axis = np.asarray(a["x"]), int(a.get("k", 1)), int(a.get("axis", -1))
    order = np.argsort(x if a.get("ascending", False) else -x, axis=axis, kind="stable")
    index = np.take(order, np.arange(k), axis=axis)
    return np.take_along_axis(x, index, axis=axis), index.astype(np.int32)


def _reduce_l2(x: np.ndarray, axis: Any, keepdims: bool) -> np.ndarray:
    return np.sqrt(np.sum(np.square(x), axis=axis, keepdims=keepdims))


def _real_div(a: dict[str, Any]) -> np.ndarray:
    x, y = np.asarray(a["x"]), np.asarray(a["y"])
    if np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer):
        return np.floor_divide(x, y)
    return np.divide(x, y)


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Kernel:
    return lambda a: fn(np.asarray(a["x"]))


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Kernel:
    return lambda a: fn(np.asarray(a["x"]), np.asarray(a["y"]))


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return erf(x).astype(x.dtype)


def _gelu(a: dict[str, Any]) -> np.ndarray:
    from math import pi, sqrt

    x, mode = np.asarray(a["x"]), str(a.get("mode", "EXACT"))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x / (1 + np.exp(-1.702 * x))
    return 0.5 * x * (1 + _erf(x / np.float32(sqrt(2))))


def _softmax(a: dict[str, Any]) -> np.ndarray:
    x, axis = np.asarray(a["x"]), int(a.get("axis", -1))
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _rsqrt(a: dict[str, Any]) -> np.ndarray:
    return 1.0 / np.sqrt(np.asarray(a["x"]) + a.get("epsilon", 1e-12))


def _matmul(a: dict[str, Any]) -> np.ndarray:
    x, y = np.asarray(a["x"]), np.asarray(a["y"])
    if a.get("transpose_x"):
        x = np.swapaxes(x, -1, -2)
    if a.get("transpose_y"):
        y = np.swapaxes(y, -1, -2)
    return _flat_matmul(x, y)


def _flat_matmul(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`np.matmul(x, y)`; a stacked x times one matrix y is computed as one 2-D product (its
    rows stacked), which BLAS runs as one call instead of numpy's loop over the stack."""
    if x.ndim > 2 and y.ndim == 2:
        return np.matmul(x.reshape(-1, x.shape[-1]), y).reshape(*x.shape[:-1], y.shape[-1])
    return np.matmul(x, y)


def _linear(a: dict[str, Any]) -> np.ndarray:
    out = _flat_matmul(np.asarray(a["x"]), np.asarray(a["weight"]).T)
    return out + a["bias"] if a.get("bias") is not None else out


TENSOR_OPS: dict[str, Kernel] = {
    "cast": _cast,
    "reshape": _reshape,
    "transpose": lambda a: np.transpose(a["x"], [int(p) for p in a["perm"]]),
    "expand_dims": lambda a: np.expand_dims(a["x"], _axes(a)),
    "squeeze": _squeeze,
    "shape": lambda a: np.array(np.shape(a["x"]), dtype=np.int32),
    "slice_by_index": _slice_by_index,
    "slice_by_size": _slice_by_size,
    "gather": _gather,
    "gather_nd": _gather_nd,
    "gather_along_axis": _gather_along_axis,
    "concat": _concat,
    "stack": lambda a: np.stack([np.asarray(v) for v in a["values"]], axis=int(a["axis"])),
    "split": _split,
    "tile": lambda a: np.tile(a["x"], [int(r) for r in a["reps"]]),
    "pad": _pad,
    "fill": lambda a: np.full([int(s) for s in np.atleast_1d(a["shape"])], a.get("value", 0.0)),
    "fill_like": lambda a: np.full(np.shape(a["ref_tensor"]), a.get("value", 0.0)),
    "range_1d": lambda a: np.arange(a["start"], a["end"], a["step"]),
    "select": lambda a: np.where(a["cond"], a["a"], a["b"]),
    "identity": lambda a: np.asarray(a["x"]),
    "linear": _linear,
    "matmul": _matmul,
}

ELEMENTWISE_OPS: dict[str, Kernel] = {
    "add": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "real_div": _real_div,
    "floor_div": _binary(np.floor_divide),
    "mod": _binary(np.mod),
    "pow": _binary(np.power),
    "maximum": _binary(np.maximum),
    "minimum": _binary(np.minimum),
    "equal": _binary(np.equal),
    "not_equal": _binary(np.not_equal),
    "greater": _binary(np.greater),
    "greater_equal": _binary(np.greater_equal),
    "less": _binary(np.less),
    "less_equal": _binary(np.less_equal),
    "logical_and": _binary(np.logical_and),
    "logical_or": _binary(np.logical_or),
    "logical_not": _unary(np.logical_not),
    "clip": _clip,
    "relu": _unary(lambda x: np.maximum(x, 0)),
    "sigmoid": _unary(lambda x: 1.0 / (1.0 + np.exp(-x))),
    "tanh": _unary(np.tanh),
    "exp": _unary(np.exp),
    "log": _unary(np.log),
    "sqrt": _unary(np.sqrt),
    "rsqrt": _rsqrt,
    "abs": _unary(np.abs),
    "erf": _unary(_erf),
    "gelu": _gelu,
    "softmax": _softmax,
    "reduce_sum": _reduce(np.sum),
    "reduce_mean": _reduce(np.mean),
    "reduce_max": _reduce(np.max),
    "reduce_argmax": _reduce_arg(np.argmax),
    "reduce_argmin": _reduce_arg(np.argmin),
    "topk": _topk,
    "reduce_min": _reduce(np.min),
    "reduce_l2_norm": _reduce(_reduce_l2),
}
