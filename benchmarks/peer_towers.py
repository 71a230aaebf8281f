"""Per-tower runners for the peers benchmark: ONNX graphs on ONNX Runtime, IRs on OpenVINO and
PyTorch modules, each with its size and the fused attention ops counted in its graph.

The peers export CLIP as one graph with both towers; a tower is cut out of it (ONNX:
`onnx.utils.extract_model`; OpenVINO: a model over the tower's output and inputs), so each tower
is timed and judged alone, as edgevl's per-tower artifacts are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

Run = Callable[[dict], np.ndarray]
THREADS = 2
OUTPUT_OF = {"image": "image_embeds", "text": "text_embeds"}
INPUTS_OF = {"image": ("pixel_values",), "text": ("input_ids", "attention_mask")}


@dataclass
class Tower:
    """One row of the benchmark: a runnable tower and what is known about it."""

    name: str
    runtime: str  # "onnxruntime" | "openvino" | "pytorch"
    precision: str  # "fp32" | "int8" | "int8w"
    run: Run
    size_mb: float | None = None
    fused_attention: int | None = None
    notes: dict = field(default_factory=dict)


def onnx_attention_ops(path: Path) -> int:
    """Nodes whose op type is a fused attention (ONNX `Attention`, ORT's `Attention` /
    `MultiHeadAttention` / `PackedAttention`, edgevl's own) anywhere in the graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum("Attention" in node.op_type for node in model.graph.node)


def ort_tower(name: str, path: Path, precision: str) -> Tower:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    wanted = [i.name for i in sess.get_inputs()]

    def run(feeds: dict) -> np.ndarray:
        return sess.run(None, {k: feeds[k] for k in wanted})[0]

    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6
    return Tower(name, "onnxruntime", precision, run, round(size, 2), onnx_attention_ops(path),
                 {"inputs": wanted})


def extract_onnx_tower(combined: Path, component: str, out: Path) -> Path:
    """The sub-graph of a two-tower ONNX export from the tower's inputs to its embeddings."""
    import onnx

    model = onnx.load(str(combined))
    names = {i.name for i in model.graph.input}
    inputs = [n for n in INPUTS_OF[component] if n in names]
    del model
    onnx.utils.extract_model(str(combined), str(out), inputs, [OUTPUT_OF[component]], check_model=False)
    return out


def ov_attention_ops(model: "object") -> int:
    return sum(op.get_type_name() == "ScaledDotProductAttention" for op in model.get_ops())


def ov_tower(name: str, model: "object", precision: str, options: dict, tmp: Path) -> Tower:
    """An OpenVINO model compiled for CPU with `THREADS` threads, latency hint, and `options`
    (an edgevl artifact's manifest runtime options; OpenVINO's defaults for the peers)."""
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY", **options}
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    wanted = [p.get_any_name() for p in compiled.inputs]

    def run(feeds: dict) -> np.ndarray:
        return np.array(request.infer({k: feeds[k] for k in wanted})[0], copy=True)

    xml = tmp / f"{abs(hash(name))}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    size = (xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 1e6
    return Tower(name, "openvino", precision, run, round(size, 2), ov_attention_ops(model),
                 {"inputs": wanted, "options": options})


def ov_sub_model(model: "object", component: str) -> "object":
    """The tower of a two-tower OpenVINO model: its embeddings output over the inputs it needs."""
    import openvino as ov

    output = model.output(OUTPUT_OF[component])
    params = [p for p in model.get_parameters() if p.get_friendly_name() in INPUTS_OF[component]]
    return ov.Model([output], params, f"{component}_tower")


def torch_tower(name: str, forward: Callable, precision: str = "fp32") -> Tower:
    """A PyTorch module run eagerly (`forward` takes the named numpy feeds)."""
    import torch

    torch.set_num_threads(THREADS)

    def run(feeds: dict) -> np.ndarray:
        with torch.inference_mode():
            return forward({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}).float().numpy()

    return Tower(name, "pytorch", precision, run)


def hf_clip_eager(checkpoint: str, component: str) -> Callable:
    """What a transformers user runs: `CLIPModel.get_image_features` / `get_text_features`
    with transformers' default attention implementation."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(checkpoint).eval()
    if component == "image":
        return lambda t: _pooled(model.get_image_features(pixel_values=t["pixel_values"]))
    return lambda t: _pooled(model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"]))


def _pooled(out: "object") -> "object":
    """L2-normalised features (as the other rows output); transformers 5 returns a model output
    whose pooler_output holds the projected features."""
    import torch

    features = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(features, dim=-1)
