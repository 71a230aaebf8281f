"""numpy kernels for MIL's neural-network ops (conv, norms, pooling, iOS18
`scaled_dot_product_attention`) and the compile-time weight-decompression ops (`constexpr_*`),
as coremltools' op definitions specify them. Same kernel contract as `mil_ops`. `conv` runs
PyTorch's conv2d arithmetic where torch is installed (`_torch_conv2d`), numpy's otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgevl.runtimes.mil_ops import Kernel


def _same_pads(size: int, kernel: int, stride: int, dilation: int, lower: bool) -> tuple[int, int]:
    """MIL's "same" padding: the output has ceil(size / stride) positions; the odd pixel goes
    after ("same") or before ("same_lower")."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small = total // 2
    return (total - small, small) if lower else (small, total - small)


def _conv(a: dict[str, Any]) -> np.ndarray:
    x, w = np.asarray(a["x"], dtype=np.float32), np.asarray(a["weight"], dtype=np.float32)
    if x.ndim != 4:
        raise NotImplementedError(f"conv of rank {x.ndim} (edgevl's interpreter runs 2-D conv)")
    groups = int(a.get("groups", 1))
    strides = [int(s) for s in a.get("strides", [1, 1])]
    dilations = [int(d) for d in a.get("dilations", [1, 1])]
    pad_type = str(a.get("pad_type", "valid"))
    kernel = w.shape[2:]
    if pad_type == "custom":
        p = [int(v) for v in a["pad"]]
        pads = [(p[0], p[1]), (p[2], p[3])]
    elif pad_type in ("same", "same_lower"):
        pads = [_same_pads(x.shape[2 + i], kernel[i], strides[i], dilations[i], pad_type == "same_lower")
                for i in range(2)]
    elif pad_type == "valid":
        pads = [(0, 0), (0, 0)]
    else:
        raise NotImplementedError(f"conv pad_type {pad_type!r}")
    torch_conv = _torch_conv2d()
    if torch_conv is not None:
        out = torch_conv(x, w, pads, strides, dilations, groups)
    else:
        out = _numpy_conv2d(np.pad(x, [(0, 0), (0, 0), *pads]), w, strides, dilations, groups)
    if a.get("bias") is not None:
        out = out + np.asarray(a["bias"]).reshape(1, -1, 1, 1)
    return out


def _torch_conv2d() -> Any:
    """PyTorch's conv2d kernel where torch is importable (it is wherever edgevl exports), else
    None. Only the arithmetic comes from it: the weights, padding, strides, dilations and groups
    are the program's, read and applied here, so the interpreter still checks what the converter
    wrote. It runs the convolutions (depthwise ones most) several times faster than the numpy kernel."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None

    def conv(x: np.ndarray, w: np.ndarray, pads: list[tuple[int, int]], strides: list[int], dilations: list[int],
             groups: int) -> np.ndarray:
        (top, bottom), (left, right) = pads
        xt = torch.from_numpy(np.ascontiguousarray(x))
        with torch.no_grad():
            if top == bottom and left == right:  # conv2d pads both sides alike
                padding = (top, left)
            else:  # zero padding, as np.pad writes it (last axis first in F.pad)
                xt, padding = F.pad(xt, [left, right, top, bottom]), (0, 0)
            out = F.conv2d(xt, torch.from_numpy(np.ascontiguousarray(w)), stride=strides, padding=padding,
                           dilation=dilations, groups=groups)
        return out.numpy()

    return conv


def _numpy_conv2d(x: np.ndarray, w: np.ndarray, strides: list[int], dilations: list[int], groups: int) -> np.ndarray:
    """conv2d of an already padded `x` in numpy (sliding windows and einsum)."""
    kernel = w.shape[2:]
    span = [(kernel[i] - 1) * dilations[i] + 1 for i in range(2)]
    windows = np.lib.stride_tricks.sliding_window_view(x, span, axis=(2, 3))
    windows = windows[:, :, :: strides[0], :: strides[1], :: dilations[0], :: dilations[1]]
    # windows: [N, C_in, H_out, W_out, kH, kW]
    c_in, c_out = x.shape[1], w.shape[0]
    if groups == 1:
        out = np.einsum("nchwij,ocij->nohw", windows, w, optimize=True)
    elif groups == c_in and c_out == c_in:
        out = np.einsum("nchwij,cij->nchw", windows, w[:, 0], optimize=True)
    else:
        step_in, step_out = c_in // groups, c_out // groups
        out = np.concatenate([
            np.einsum("nchwij,ocij->nohw", windows[:, g * step_in:(g + 1) * step_in],
                      w[g * step_out:(g + 1) * step_out], optimize=True)
            for g in range(groups)
        ], axis=1)
    return out


def _layer_norm(a: dict[str, Any]) -> np.ndarray:
    x = np.asarray(a["x"])
    axes = tuple(int(v) for v in np.atleast_1d(a["axes"])) if a.get("axes") is not None else tuple(range(x.ndim))
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean(np.square(x - mean), axis=axes, keepdims=True)
    out = (x - mean) / np.sqrt(var + a.get("epsilon", 1e-5))
    if a.get("gamma") is not None:
        out = out * a["gamma"]
    if a.get("beta") is not None:
        out = out + a["beta"]
    return out


def _batch_norm(a: dict[str, Any]) -> np.ndarray:
    x = np.asarray(a["x"])
    shape = (1, -1) + (1,) * (x.ndim - 2)
    out = (x - np.reshape(a["mean"], shape)) / np.sqrt(np.reshape(a["variance"], shape) + a.get("epsilon", 1e-5))
    if a.get("gamma") is not None:
        out = out * np.reshape(a["gamma"], shape)
    if a.get("beta") is not None:
        out = out + np.reshape(a["beta"], shape)
    return out


def _sdpa(a: dict[str, Any]) -> np.ndarray:
    """softmax(Q K^T / sqrt(E) + mask) V; a boolean mask keeps where True (-inf elsewhere)."""
    q, k, v = (np.asarray(a[n], dtype=np.float32) for n in ("query", "key", "value"))
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) / np.float32(math.sqrt(q.shape[-1]))
    mask = a.get("attn_mask")
    if mask is not None:
        mask = np.asarray(mask)
        scores = np.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + mask
    scores = scores - np.max(scores, axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= np.sum(weights, axis=-1, keepdims=True)
    return np.matmul(weights, v)


def _blockwise_shift_scale(a: dict[str, Any]) -> np.ndarray:
    """output = scale * (data - offset), scale and offset repeated over blocks of
    data.shape[i] / scale.shape[i] along each axis."""
    scale = np.asarray(a["scale"])
    data = np.asarray(a["data"]).astype(np.float32)
    offset = a.get("offset")
    offset = None if offset is None else np.asarray(offset).astype(np.float32)
    for axis, (n, m) in enumerate(zip(data.shape, scale.shape)):
        if n // m > 1:
            scale = np.repeat(scale, n // m, axis)
            offset = None if offset is None else np.repeat(offset, n // m, axis)
    if offset is not None:
        data = data - offset
    return (scale.astype(np.float32) * data).astype(scale.dtype)


def _lut_to_dense(a: dict[str, Any]) -> np.ndarray:
    """Scalar palettization: lut has rank K + 2 ([*blocks, 2**nbits, 1]) for K-rank indices;
    block b of each axis uses its own table; output[i] = lut[block(i), indices[i], 0]."""
    indices = np.asarray(a["indices"]).astype(np.int64)
    lut = np.asarray(a["lut"])
    if lut.shape[-1] != 1:
        raise NotImplementedError("constexpr_lut_to_dense with vector palettization")
    block_ids = []
    for axis, (n, m) in enumerate(zip(indices.shape, lut.shape[:-2])):
        ids = np.arange(n) // (n // m)
        shape = [1] * indices.ndim
        shape[axis] = n
        block_ids.append(np.broadcast_to(ids.reshape(shape), indices.shape))
    return lut[(*block_ids, indices, np.zeros_like(indices))]


def _affine_dequantize(a: dict[str, Any]) -> np.ndarray:
    """iOS16: (quantized_data - zero_point) * scale, per tensor or along `axis`."""
    data = np.asarray(a["quantized_data"]).astype(np.float32)
    scale, zero = np.asarray(a["scale"]), np.asarray(a["zero_point"]).astype(np.float32)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * data.ndim
        shape[int(a["axis"])] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((data - zero) * scale.astype(np.float32)).astype(scale.dtype)


NN_OPS: dict[str, Kernel] = {
    "conv": _conv,
    "layer_norm": _layer_norm,
    "batch_norm": _batch_norm,
    "scaled_dot_product_attention": _sdpa,
    "constexpr_blockwise_shift_scale": _blockwise_shift_scale,
    "constexpr_lut_to_dense": _lut_to_dense,
    "constexpr_affine_dequantize": _affine_dequantize,
}
