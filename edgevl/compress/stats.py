"""Activation statistics on calibration feeds, and the local int8 error of one layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from edgevl.calibration.observers import make_observer
from edgevl.compress.ort_graph import consumers, session
from edgevl.errors import CalibrationError


@dataclass
class ActivationStats:
    observers: dict[str, Any]
    channel_absmax: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]  # a fixed-seed sample of rows (for local error figures)
    samples: int
    # every calibration sample's rows [rows, channels], for the tensors asked for only (memory)
    samples_of: dict[str, list[np.ndarray]] = field(default_factory=dict)


def collect_stats(
    model: "object", tensors: list[str], feeds: list[dict[str, np.ndarray]], observer: str,
    keep_rows: int = 256, seed: int = 0, keep_samples_of: Iterable[str] = (),
) -> ActivationStats:
    """Run the float graph over the calibration feeds and observe `tensors`.

    `keep_samples_of`: tensors whose every sample is kept whole (ActivationStats.samples_of).
    Raises CalibrationError naming the tensor, the layer that reads it and the sample if an
    activation is NaN or Inf."""
    import onnx

    if not feeds:
        raise CalibrationError("calibration set is empty; give at least one sample")
    aug = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in aug.graph.output}
    for t in tensors:
        if t not in have:
            aug.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    readers = consumers(model)
    sess = session(aug)
    names = [o.name for o in sess.get_outputs()]
    obs = {t: make_observer(observer) for t in tensors}
    chmax: dict[str, np.ndarray] = {}
    rows: dict[str, list] = {t: [] for t in tensors}
    whole: dict[str, list[np.ndarray]] = {t: [] for t in keep_samples_of}
    rng = np.random.default_rng(seed)
    per_sample = max(1, keep_rows // len(feeds))
    for k, feed in enumerate(feeds):
        outs = dict(zip(names, sess.run(None, feed)))
        for t in tensors:
            x = outs[t]
            if not np.all(np.isfinite(x)):
                raise CalibrationError(
                    f"non-finite activations (NaN/Inf) in tensor {t!r} (input of layer {readers[t][0].name if t in readers else '?'}) "
                    f"on calibration sample {k}; check the inputs and the float model"
                )
            obs[t].update(x)
            flat = x.reshape(-1, x.shape[-1])
            cm = np.abs(flat).max(0)
            chmax[t] = cm if t not in chmax else np.maximum(chmax[t], cm)
            take = rng.choice(flat.shape[0], size=min(per_sample, flat.shape[0]), replace=False)
            rows[t].append(flat[take])
            if t in whole:
                whole[t].append(flat)
    return ActivationStats(
        obs, chmax, {t: np.concatenate(r)[:keep_rows] for t, r in rows.items()}, len(feeds), whole,
    )


def local_sqnr(x: np.ndarray, w: np.ndarray, act: dict, scales: np.ndarray, weight_qmax: int = 127) -> float:
    """SQNR (dB) of one layer's output when its input and weight go through the recipe's grid."""
    s, z = float(act["scale"]), int(act["zero_point"])
    xq = (np.clip(np.round(x / s) + z, act["qmin"], act["qmax"]) - z) * s
    wq = np.clip(np.round(w / scales[None, :]), -weight_qmax, weight_qmax) * scales[None, :]
    return output_sqnr(x @ w, xq @ wq)


def output_sqnr(y: np.ndarray, yq: np.ndarray) -> float:
    """SQNR (dB) of a layer output `yq` against its float `y`, in the outputs' own precision."""
    noise = float(np.sum((y - yq) ** 2))
    return 10 * np.log10(max(float(np.sum(y**2)), 1e-30) / max(noise, 1e-30))
