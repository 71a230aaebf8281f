"""What the ORT-only graph rewrites share: a session that also returns inner tensors, dead-node
pruning, and the numeric check every rewrite must pass before it is kept (the rewritten graph
against the one it came from, on real feeds)."""

from __future__ import annotations

import numpy as np

MSFT_DOMAIN = "com.microsoft"


def session_with_outputs(model: "object", extra: list[str]) -> tuple["object", list[str]]:
    """An ORT session over `model` that also returns the tensors named in `extra` (after the
    graph's own outputs), and the names of everything it returns."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        onnx.helper.make_value_info(t, onnx.TypeProto()) for t in extra if t not in known
    )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess, [o.name for o in sess.get_outputs()]


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
