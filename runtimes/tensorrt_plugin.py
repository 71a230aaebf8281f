"""edgevl's attention as a TensorRT plugin, for TensorRT older than 10.14 (no IAttention): the
plugin's identity, its semantics and its implementation, on the runtime's side because the process
that runs a plugin-flavour engine must register the plugin before deserialising it.

`attention_reference` (numpy) is the semantics: the same as edgevl/ops/attention.py,
`softmax(q @ k^T * scale + mask) @ v`. `register_plugins()` registers both plugin forms (unmasked,
masked) with TensorRT's Python plugin API (`tensorrt.plugin`, TensorRT 10.6+, "quickly deployable
plugins") when TensorRT is importable; the registered implementation runs the attention with torch
on the GPU tensors TensorRT hands it. TensorRT cannot be installed on the machines edgevl is
developed on, so `register_plugins` follows NVIDIA's documentation and runs only where the engine
tests run (they skip without TensorRT). The exporter writes plugin nodes naming these plugins
(`edgevl.exporters.tensorrt_plugin`, `tensorrt_attention.to_plugin_nodes`).
"""

# No `from __future__ import annotations` here: tensorrt.plugin reads the registered functions'
# annotations (TensorDesc, attribute types) as objects.
import importlib.util
from typing import Optional

import numpy as np

# TensorRT's plugin registry key: namespace::name, version. An ONNX plugin node carries the name as
# its op_type and the namespace and version as attributes.
PLUGIN_NAMESPACE = "edgevl"
PLUGIN_VERSION = "1"
UNMASKED_NAME = "edgevl_attention"
MASKED_NAME = "edgevl_attention_masked"


def attention_reference(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: Optional[np.ndarray], scale: float, is_causal: int = 0,
) -> np.ndarray:
    """The plugin's semantics on `[B, H, S, D]` arrays (fp32 accumulation, output in q's dtype)."""
    dtype = q.dtype
    q32, k32, v32 = (np.asarray(a, np.float32) for a in (q, k, v))
    scores = np.einsum("bhqd,bhkd->bhqk", q32, k32) * np.float32(scale)
    if is_causal:
        q_len, k_len = scores.shape[-2:]
        scores = np.where(np.tril(np.ones((q_len, k_len), bool)), scores, np.float32(-np.inf))
    if mask is not None:
        mask = np.asarray(mask)
        scores = np.where(mask, scores, np.float32(-np.inf)) if mask.dtype == bool else scores + mask.astype(np.float32)
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.einsum("bhqk,bhkd->bhqd", weights, v32).astype(dtype)


def tensorrt_importable() -> bool:
    """`tensorrt` imports here (a GPU is not needed to register plugins)."""
    return importlib.util.find_spec("tensorrt") is not None


_registered = False


def register_plugins() -> bool:
    """Register both plugin forms with `tensorrt.plugin` (once); False when TensorRT is absent."""
    global _registered
    if _registered:
        return True
    if not tensorrt_importable():
        return False
    import tensorrt.plugin as trtp  # noqa: F401 - TensorRT 10.6+
    import torch

    def run(q, k, v, mask, scale: float, is_causal: int, out, stream) -> None:  # noqa: ANN001
        tq, tk, tv = (torch.as_tensor(t, device="cuda") for t in (q, k, v))
        tm = torch.as_tensor(mask, device="cuda") if mask is not None else None
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            y = torch.nn.functional.scaled_dot_product_attention(
                tq, tk, tv, attn_mask=tm, scale=scale, is_causal=bool(is_causal) and tm is None)
            torch.as_tensor(out, device="cuda").copy_(y)

    @trtp.register(f"{PLUGIN_NAMESPACE}::{UNMASKED_NAME}")
    def _unmasked_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, scale: float,
                       is_causal: int) -> trtp.TensorDesc:
        return q.like()

    @trtp.impl(f"{PLUGIN_NAMESPACE}::{UNMASKED_NAME}")
    def _unmasked_impl(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, scale: float, is_causal: int,
                       outputs: tuple, stream: int) -> None:
        run(q, k, v, None, scale, is_causal, outputs[0], stream)

    @trtp.register(f"{PLUGIN_NAMESPACE}::{MASKED_NAME}")
    def _masked_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, mask: trtp.TensorDesc,
                     scale: float, is_causal: int) -> trtp.TensorDesc:
        return q.like()

    @trtp.impl(f"{PLUGIN_NAMESPACE}::{MASKED_NAME}")
    def _masked_impl(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, mask: trtp.Tensor, scale: float,
                     is_causal: int, outputs: tuple, stream: int) -> None:
        run(q, k, v, mask, scale, is_causal, outputs[0], stream)

    _registered = True
    return True
