"""ONNX graph helpers every quantisation scheme and ORT rewrite shares: the ONNX constants, one
ONNX Runtime session factory (optionally returning inner tensors), producer / consumer maps,
dead-node pruning, the numeric check every rewrite must pass before it is kept, a quiet ORT
quantizer, and the map from ONNX node to the PyTorch module it came from."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Iterator, Optional

import numpy as np

# onnx 1.23 writes IR 14 by default, which ORT 1.31 rejects.
IR_VERSION = 10
MSFT_DOMAIN = "com.microsoft"
# What a quantized ONNX graph may hold: "standard", ai.onnx ops only (any ONNX runtime, ONNX's own
# reference evaluator); "ort", ONNX Runtime's com.microsoft ops too.
ONNX_FLAVORS = ("standard", "ort")
STANDARD_DOMAINS = ("", "ai.onnx")


def foreign_ops(model: "object") -> list[str]:
    """`domain.op_type` of every node outside the standard ONNX domains, sorted, each once."""
    return sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS})


def session(model: "object", threads: Optional[int] = 2) -> "object":
    """An ONNX Runtime CPU session over `model` (a ModelProto, its bytes or a path). `threads`:
    intra-op threads (inter-op 1); None leaves both at ONNX Runtime's defaults."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def session_with_outputs(
    model: "object", extra: list[str], threads: Optional[int] = None,
) -> tuple["object", list[str]]:
    """A session over `model` that also returns the tensors named in `extra` (after the graph's
    own outputs), and the names of everything it returns."""
    import onnx

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        onnx.helper.make_value_info(t, onnx.TypeProto()) for t in extra if t not in known
    )
    sess = session(probe, threads)
    return sess, [o.name for o in sess.get_outputs()]


def initializers(model: "object") -> dict:
    """Initializer name -> TensorProto."""
    return {init.name: init for init in model.graph.initializer}


def producers(model: "object") -> dict[str, "object"]:
    """Tensor name -> the node that writes it."""
    return {o: n for n in model.graph.node for o in n.output}


def consumers(model: "object") -> dict[str, list]:
    """Tensor name -> the nodes that read it, in graph order (once per input slot, so
    `len(consumers[t])` counts the reads)."""
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return readers


def insert_before(model: "object", before: dict[str, list]) -> None:
    """Put each list of new nodes right before the node it is keyed by (keeps topological order)."""
    if not before:
        return
    nodes = []
    for node in model.graph.node:
        nodes.extend(before.get(node.name, []))
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def drop_unread_initializers(model: "object", extra: Optional[list] = None) -> None:
    """Keep only the initializers some node reads (then append `extra`), in place."""
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + list(extra or []))


def use_msft_opset(model: "object") -> None:
    from onnx import helper

    if not any(o.domain == MSFT_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MSFT_DOMAIN, 1))


def prune_dead_nodes(model: "object") -> None:
    """Drop nodes (and initializers) nothing reads any more, in place."""
    outputs = {o.name for o in model.graph.output}
    while True:
        read = {i for n in model.graph.node for i in n.input} | outputs
        live = [n for n in model.graph.node if any(o in read for o in n.output)]
        if len(live) == len(model.graph.node):
            break
        del model.graph.node[:]
        model.graph.node.extend(live)
    keep = [i for i in model.graph.initializer if i.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def check_feeds(feeds: list[dict[str, np.ndarray]], limit: int = 8) -> list[dict[str, np.ndarray]]:
    """The first `limit` feeds one by one, and batched together where their shapes agree (a batch
    with rows of different lengths checks that per-row padding is honoured)."""
    chosen = feeds[:limit]
    same = len({tuple((k, v.shape[1:]) for k, v in sorted(f.items())) for f in chosen}) == 1
    batch = [{k: np.concatenate([f[k] for f in chosen]) for k in chosen[0]}] if same and len(chosen) > 1 else []
    return chosen + batch


def max_relative_error(ref: "object", candidate: "object", feeds: list[dict[str, np.ndarray]]) -> float:
    """Largest |difference| of the first output over `feeds`, relative to the reference's largest
    magnitude on that feed. `ref` is a session over the original graph (extra outputs come after
    the graph's own, so its first output is the graph's first)."""
    cand, _ = session_with_outputs(candidate, [])
    worst = 0.0
    for feed in feeds:
        a, b = ref.run(None, feed)[0], cand.run(None, feed)[0]
        worst = max(worst, float(np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-12)))
    return worst


@contextlib.contextmanager
def quiet_ort_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice ("consider pre-processing") on the root logger at
    WARNING for every call; the CLI's output stays edgevl's."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def layer_paths(model: "object") -> dict[str, str]:
    """ONNX node name -> the PyTorch module path it came from (the dynamo exporter's metadata)."""
    paths = {}
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                try:
                    scopes = [s for s in json.loads(prop.value.replace("'", '"')) if s]
                except ValueError:
                    scopes = []
                if scopes:
                    # Each scope is a full module path; the last one is the aten op itself.
                    paths[node.name] = scopes[-2] if len(scopes) > 1 else scopes[-1]
    return paths


def matches(name: str, path: str, patterns: tuple[str, ...]) -> Optional[str]:
    """The first pattern that names node `name` exactly or is a substring of its module `path`."""
    for p in patterns:
        if p and (p == name or p in path):
            return p
    return None
