"""edgevl's attention as a TensorRT plugin, for TensorRT older than 10.14 (no IAttention).

The ONNX graph names the plugin (`tensorrt_attention.to_plugin_nodes`); this module is its
implementation: `attention_reference` (numpy, the semantics: the same as edgevl/ops/attention.py,
`softmax(q @ k^T * scale + mask) @ v`) and `register_plugins()`, which registers both plugin
forms with TensorRT's Python plugin API (`tensorrt.plugin`, TensorRT 10.6+, "quickly deployable
plugins") when TensorRT is importable. The registered implementation runs the attention with
torch on the GPU tensors TensorRT hands it; such an engine needs this module imported (and
`register_plugins()` called) in the process that runs it.
"""

# No `from __future__ import annotations` here: tensorrt.plugin reads the registered functions'
# annotations (TensorDesc, attribute types) as objects.
import importlib.util
from typing import Optional

import numpy as np

from edgevl.exporters.tensorrt_attention import PluginId

PLUGIN_NAMESPACE = "edgevl"
PLUGIN_VERSION = "1"
UNMASKED = PluginId("edgevl_attention", PLUGIN_NAMESPACE, PLUGIN_VERSION)
MASKED = PluginId("edgevl_attention_masked", PLUGIN_NAMESPACE, PLUGIN_VERSION)
PLUGINS = (UNMASKED, MASKED)


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

    @trtp.register(f"{PLUGIN_NAMESPACE}::{UNMASKED.name}")
    def _unmasked_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, scale: float,
                       is_causal: int) -> trtp.TensorDesc:
        return q.like()

    @trtp.impl(f"{PLUGIN_NAMESPACE}::{UNMASKED.name}")
    def _unmasked_impl(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, scale: float, is_causal: int,
                       outputs: tuple, stream: int) -> None:
        run(q, k, v, None, scale, is_causal, outputs[0], stream)

    @trtp.register(f"{PLUGIN_NAMESPACE}::{MASKED.name}")
    def _masked_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, mask: trtp.TensorDesc,
                     scale: float, is_causal: int) -> trtp.TensorDesc:
        return q.like()

    @trtp.impl(f"{PLUGIN_NAMESPACE}::{MASKED.name}")
    def _masked_impl(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, mask: trtp.Tensor, scale: float,
                     is_causal: int, outputs: tuple, stream: int) -> None:
        run(q, k, v, mask, scale, is_causal, outputs[0], stream)

    _registered = True
    return True
