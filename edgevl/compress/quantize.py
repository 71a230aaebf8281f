"""Quantisation: typed configs, `quantize_`, and the ONNX hook the exporter calls.

The scheme that won on the default model's real text tower (all-MiniLM-L6-v2, real captions;
figures in benchmarks/results/onnx_int8.md):

- W8A8 static Q/DQ on every MatMul/Gemm with a constant weight (never on `Attention`):
  symmetric int8 weights per output channel, uint8 activations per tensor (min-max observer).
- SmoothQuant on the activations that carry outlier channels (LayerNorm outputs, GELU outputs,
  attention outputs): s_j = max|x_j|^a / max|w_j|^(1-a); x / s goes in front of the MatMul (a
  `Mul` in post-LN BERT, folded into LayerNorm where the LN output feeds MatMuls only, into the
  V projection for an attention output), s goes into the weight rows. alpha is 0.7, or (the
  ONNX default, `DynamicW8A8Config`) searched per tensor on the calibration set
  (edgevl/compress/smoothquant.py).
- An accuracy gate on the parity set against the fp32 artifact; layers are moved back to float
  in order of their measured local error until it passes (or the export fails, naming them).
- A coarse speed guard: per weight shape, int8 vs float MatMul is timed on ORT; shapes where
  int8 is slower stay float.

Weight-only: int8w = `MatMulNBits` 8-bit; int4w = 4-bit blocks (`MatMulNBits`, and the token
embedding tables as `GatherBlockQuantized`), with the most sensitive layers raised to 8-bit until
the gate passes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from edgevl.calibration.observers import OBSERVERS, make_observer, qparams_for_range
from edgevl.compress.recipe import LayerRecipe, QuantRecipe
from edgevl.errors import CalibrationError, InputError, ParityError

log = logging.getLogger("edgevl.quantize")

# --------------------------------------------------------------------------------------------
# Configs (frozen, validated, JSON-serialisable)


@dataclass(frozen=True)
class SmoothQuantConfig:
    """SmoothQuant: migrate activation outliers into the weights before int8.

    Attributes:
        alpha: migration strength in [0, 1]; 0 = none, 1 = all of the range onto the weights.
            0.7 measured best on MiniLM (0.5: min cosine 0.9903, 0.7: 0.9978).
        producers: what produces the activations that are smoothed (where outlier channels
            live): ONNX op types, and "Attention" for an attention output merged back to
            `[B, S, H*D]`, whose factors fold into the V projection for free.
        alpha_search: if given, each smoothed tensor takes the alpha of this grid whose
            simulated int8 output is closest to float on the calibration samples (see
            edgevl/compress/smoothquant.py); `alpha` is then unused. Empty: `alpha` everywhere.
    """

    alpha: float = 0.7
    producers: tuple[str, ...] = ("LayerNormalization", "Gelu", "Attention")
    alpha_search: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for a in (self.alpha, *self.alpha_search):
            if not 0.0 <= a <= 1.0:
                raise InputError(f"SmoothQuant alpha {a} must be in [0, 1] (try 0.5 to 0.8)")


@dataclass(frozen=True)
class W8A8Config:
    """Static int8: int8 weights (per output channel, symmetric), uint8 activations (per tensor).

    Attributes:
        observer: activation range observer, one of minmax, percentile, entropy, mse.
        smoothquant: SmoothQuant settings, or None to switch it off (some towers, e.g. CLIP's,
            are reported to do better without it: measure).
        max_drop: largest allowed drop of zero-shot top-1 agreement on the parity set (the
            cosine floor comes from edgevl/tolerances.py).
        speed_guard: keep float the layer shapes where int8 is measured slower on ORT.
        exclude: layer names (ONNX node or module path, substring match) that stay float.
        activation_ranges: fixed activation ranges `((layer substring, lo, hi), ...)` that
            override the observer; meant for experts and for testing the gate.
        calib_limit: at most this many calibration samples are observed.
    """

    observer: str = "minmax"
    smoothquant: Optional[SmoothQuantConfig] = SmoothQuantConfig()
    max_drop: float = 0.01
    speed_guard: bool = True
    exclude: tuple[str, ...] = ()
    activation_ranges: tuple[tuple[str, float, float], ...] = ()
    calib_limit: int = 64

    def __post_init__(self) -> None:
        if self.observer not in OBSERVERS:
            raise InputError(f"unknown observer {self.observer!r}; use one of: {', '.join(OBSERVERS)}")
        if not 0.0 <= self.max_drop < 1.0:
            raise InputError(f"max_drop {self.max_drop} must be in [0, 1) (e.g. 0.01)")
        if self.calib_limit < 1:
            raise InputError("calib_limit must be at least 1")


@dataclass(frozen=True)
class WeightOnlyConfig:
    """Weight-only quantisation (activations stay float).

    Attributes:
        bits: 8 or 4.
        group_size: weights per scale along the input dimension (4-bit; a power of two >= 16).
        embeddings: also pack token embedding tables (4-bit only; ORT's GatherBlockQuantized).
        max_drop: as in W8A8Config.
    """

    bits: int = 4
    group_size: int = 32
    embeddings: bool = True
    max_drop: float = 0.01

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise InputError(f"weight-only bits {self.bits} not supported; use 8 or 4")
        if self.group_size < 16 or self.group_size & (self.group_size - 1):
            raise InputError(f"group_size {self.group_size} must be a power of two >= 16 (e.g. 32, 128)")


QuantConfig = Any  # W8A8Config | SmoothQuantConfig | WeightOnlyConfig | DynamicW8A8Config | ConvW8A8Config

@dataclass(frozen=True)
class DynamicW8A8Config:
    """int8 weights (per output channel, symmetric) with activations quantised at run time, per
    tensor (ONNX Runtime's MatMulInteger path), after SmoothQuant (alpha per tensor) moved
    activation outliers into the weights, weights rounded with GPTQ; each block's Q/K/V
    projections packed with its attention into one op that ORT runs as `QAttention`, the BERT
    embedding fused into `EmbedLayerNormalization`. The default for `--precision int8` on ONNX.

    Measured on the default model's text tower (benchmarks/results/onnx_int8.md, 2 threads,
    every ratio against fp32 in the same run): every layer int8 at min cosine 0.9937 and top-1
    agreement 1.0, 0.51x / 0.50x of fp32 at 16 / 77 tokens (the run before:
    onnx_int8.run1.md, 0.50x / 0.39x); on 1 thread 0.35x / 0.41x. Without GPTQ the gate keeps 3
    layers float (0.59x / 0.64x); without the embedding fusion 1 (0.56x / 0.54x).

    Why the default (default model's text tower, 2 threads, batch 1, same run, idle machine):
    static W8A8 (`W8A8Config`) ran at 0.92x / 0.66x of fp32 at 16 / 77 tokens, dynamic per-channel
    at 0.64x / 0.53x; SmoothQuant (alpha 0.7) lifts dynamic per-channel from min cosine 0.967 to
    0.990 on the parity texts (0.5: 0.976, 0.85: 0.989). Calibration is still used: for the
    SmoothQuant factors and to rank layers for the accuracy gate.

    Attributes:
        smoothquant: SmoothQuant settings, or None to switch it off.
        max_drop: as in W8A8Config.
        exclude: layer names (ONNX node or module path, substring match) that stay float.
        calib_limit: at most this many calibration samples are observed.
        pack_attention: pack each standard Attention with its Q/K/V projections into ORT's
            `com.microsoft.Attention`, quantised as `QAttention` (see
            edgevl/compress/packed_attention.py); checked against the unpacked graph first.
        fuse_embedding: fuse a BERT-style embedding (three lookups, sum, LayerNorm) into ORT's
            `EmbedLayerNormalization` (see edgevl/compress/embed_layernorm.py); checked too.
        gptq: round the int8 weights with GPTQ on the calibration inputs instead of to nearest
            (same scales, same ops; see edgevl/compress/gptq.py).
    """

    smoothquant: Optional[SmoothQuantConfig] = SmoothQuantConfig(alpha_search=(0.5, 0.6, 0.7, 0.8, 0.9))
    max_drop: float = 0.01
    exclude: tuple[str, ...] = ()
    calib_limit: int = 64
    pack_attention: bool = True
    fuse_embedding: bool = True
    gptq: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_drop < 1.0:
            raise InputError(f"max_drop {self.max_drop} must be in [0, 1) (e.g. 0.01)")
        if self.calib_limit < 1:
            raise InputError(f"calib_limit {self.calib_limit} must be at least 1")


@dataclass(frozen=True)
class ConvW8A8Config:
    """Static int8 for convolutional towers on ONNX Runtime: per-output-channel int8 weights,
    per-tensor uint8 activations, Q/DQ around every Conv and residual Add; the earliest
    convolutions stay float until the accuracy gate passes. `--precision int8` picks it for a
    tower whose weighted layers are convolutions.

    Why this shape (default model's EfficientNet-Lite0, ORT CPU, 2 threads, batch 1, same run,
    benchmarks/onnx_int8.py): uint8 activations let ORT run every conv, depthwise included, as
    one NHWC int8 chain (0.60x of fp32); int8 activations leave the depthwise convs float between
    layout transposes (1.10x, slower than fp32). Quantizing one conv alone cost min cosine 0.57 (the
    stem), 0.77 (the first depthwise), 0.95 (the 4th and 5th) and 0.998-0.99997 for each of the
    12th to 24th (the later ones were not measured one by one): sensitivity falls with depth,
    so the gate keeps a float prefix.

    Attributes:
        max_drop: as in W8A8Config.
        speed_guard: keep the whole tower float when the int8 graph is not measured at least
            `min_speedup` x faster than fp32 on this machine (per-layer timing means little
            here: the cost is in the layout changes between int8 and float layers).
        min_speedup: see speed_guard.
        calib_limit: at most this many calibration samples are observed.
    """

    max_drop: float = 0.01
    speed_guard: bool = True
    min_speedup: float = 1.1
    calib_limit: int = 64

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_drop < 1.0:
            raise InputError(f"max_drop {self.max_drop} must be in [0, 1) (e.g. 0.01)")
        if self.min_speedup <= 0:
            raise InputError(f"min_speedup {self.min_speedup} must be positive (e.g. 1.1)")
        if self.calib_limit < 1:
            raise InputError(f"calib_limit {self.calib_limit} must be at least 1")


PRECISION_CONFIGS: dict[str, Callable[..., QuantConfig]] = {
    "int8": DynamicW8A8Config,
    "int8w": lambda **kw: WeightOnlyConfig(bits=8, group_size=128, embeddings=False, **kw),
    "int4w": lambda **kw: WeightOnlyConfig(bits=4, group_size=32, **kw),
}


def config_to_json(config: QuantConfig) -> dict:
    data = json.loads(json.dumps(asdict(config)))  # tuples -> lists, as the JSON reads back
    data["type"] = type(config).__name__
    return data


# --------------------------------------------------------------------------------------------
# Handlers by config type (torchao's habit)

_HANDLERS: dict[type, Callable[..., tuple["object", dict]]] = {}


def register_handler(config_type: type) -> Callable:
    def deco(fn: Callable) -> Callable:
        if config_type in _HANDLERS:
            raise ValueError(f"a quantisation handler for {config_type.__name__} is already registered")
        _HANDLERS[config_type] = fn
        return fn

    return deco


def handler_for(config: QuantConfig) -> Callable:
    try:
        return _HANDLERS[type(config)]
    except KeyError:
        names = ", ".join(t.__name__ for t in _HANDLERS)
        raise InputError(f"no quantisation handler for {type(config).__name__}; use one of: {names}") from None


# --------------------------------------------------------------------------------------------
# Graph helpers


def _session(model: "object", threads: int = 2) -> "object":
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


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


def _matches(name: str, path: str, patterns: tuple[str, ...]) -> Optional[str]:
    for p in patterns:
        if p and (p == name or p in path):
            return p
    return None


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
    readers = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, n.name)
    sess = _session(aug)
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
                    f"non-finite activations (NaN/Inf) in tensor {t!r} (input of layer {readers.get(t, '?')}) "
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


def _local_sqnr(x: np.ndarray, w: np.ndarray, act: dict, scales: np.ndarray) -> float:
    """SQNR (dB) of one layer's output when its input and weight go through the recipe's grid."""
    s, z = float(act["scale"]), int(act["zero_point"])
    xq = (np.clip(np.round(x / s) + z, act["qmin"], act["qmax"]) - z) * s
    wq = np.clip(np.round(w / scales[None, :]), -127, 127) * scales[None, :]
    y, yq = x @ w, xq @ wq
    noise = float(np.sum((y - yq) ** 2))
    return 10 * np.log10(max(float(np.sum(y**2)), 1e-30) / max(noise, 1e-30))


# --------------------------------------------------------------------------------------------
# Speed guard


def _time_session(sess: "object", feed: dict, runs: int = 20) -> float:
    for _ in range(3):
        sess.run(None, feed)
    best = np.inf
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        best = min(best, time.perf_counter() - t)
    return best


def speed_guard(shapes: set[tuple[int, int]], rows: int = 77, margin: float = 1.1) -> dict[tuple[int, int], dict]:
    """Time a float MatMul against its Q/DQ int8 form on ORT for each weight shape `(K, N)` with
    `rows` activation rows; a shape is `slower` when int8 takes more than `margin` x float."""
    from onnx import TensorProto, helper, numpy_helper

    from edgevl.compress.qdq import IR_VERSION, quantize_weight_per_channel

    out = {}
    rng = np.random.default_rng(0)
    for k, n in sorted(shapes):
        w = rng.standard_normal((k, n)).astype(np.float32) * 0.05
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, k])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        fl = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "f", [x], [y],
                               [numpy_helper.from_array(w, "w")])
        codes, scales = quantize_weight_per_channel(w)
        q_nodes = [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
            helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=1),
            helper.make_node("MatMul", ["xd", "wd"], ["y"]),
        ]
        qg = helper.make_graph(q_nodes, "q", [x], [y], [
            numpy_helper.from_array(np.asarray(0.02, np.float32), "s"),
            numpy_helper.from_array(np.asarray(128, np.uint8), "z"),
            numpy_helper.from_array(codes, "wq"), numpy_helper.from_array(scales, "ws"),
            numpy_helper.from_array(np.zeros(n, np.int8), "wz"),
        ])
        opset = [helper.make_opsetid("", 21)]
        feed = {"x": rng.standard_normal((1, rows, k)).astype(np.float32)}
        sf = _session(helper.make_model(fl, opset_imports=opset, ir_version=IR_VERSION))
        sq = _session(helper.make_model(qg, opset_imports=opset, ir_version=IR_VERSION))
        tf, tq = _time_session(sf, feed), _time_session(sq, feed)
        out[(k, n)] = {"float_ms": round(tf * 1e3, 4), "int8_ms": round(tq * 1e3, 4), "slower": tq > tf * margin}
    return out


# --------------------------------------------------------------------------------------------
# Accuracy gate data


@dataclass
class GateData:
    """The parity inputs for one tower, the fp32 artifact's outputs on them, and the other
    tower's reference embeddings (for zero-shot agreement)."""

    feeds: dict[str, np.ndarray]
    reference: np.ndarray
    agreement_fn: Optional[Callable[[np.ndarray, np.ndarray], tuple[float, float]]]
    n_samples: int




def build_gate_data(spec: "object", component: str, fp32_model: "object") -> GateData:
    from edgevl.parity import agreement
    from edgevl.paritydata import build_parity_data, run_batched

    data = build_parity_data(spec, split="gate")
    feeds = data.feeds(component)
    sess = _session(fp32_model)
    reference = run_batched(lambda f: sess.run(None, f)[0], feeds)
    n_prompts = data.n_prompts
    fn = None
    if component == "text" and spec.tokenize is not None:
        images = data.reference["image"].astype(np.float64)

        def fn(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
            return agreement(images @ ref[-n_prompts:].T, images @ cand[-n_prompts:].T)
    elif component == "image" and spec.tokenize is not None:
        prompts = data.reference["text"][-n_prompts:].astype(np.float64)

        def fn(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
            return agreement(ref @ prompts.T, cand @ prompts.T)
    return GateData(feeds, reference, fn, int(reference.shape[0]))


def measure(gate: GateData, model: "object") -> dict:
    from edgevl.parity import cosine_per_row, sqnr_db
    from edgevl.paritydata import run_batched

    sess = _session(model)
    out = run_batched(lambda f: sess.run(None, f)[0], gate.feeds)
    cos = cosine_per_row(gate.reference, out)
    return {
        "cosine_min": round(float(cos.min()), 6),
        "cosine_mean": round(float(cos.mean()), 6),
        "sqnr_db": round(float(sqnr_db(gate.reference, out)), 2),
        "top1_agreement": None,
        "top1_agreement_strict": None,
    } | ({} if gate.agreement_fn is None else dict(zip(
        ("top1_agreement", "top1_agreement_strict"),
        (round(v, 4) for v in gate.agreement_fn(gate.reference, out)))))


def gate_passes(figures: dict, cosine_min: float, max_drop: float) -> bool:
    ok = figures["cosine_min"] >= cosine_min
    if figures["top1_agreement"] is not None:
        ok = ok and figures["top1_agreement"] >= 1.0 - max_drop - 1e-9
    return ok


# --------------------------------------------------------------------------------------------
# The W8A8 handler


@dataclass
class QuantContext:
    """What a handler gets: the float graph, calibration feeds, gate data and tolerance."""

    model: "object"  # prepared float graph
    feeds: list[dict[str, np.ndarray]]
    gate: Optional[GateData]
    cosine_min: float
    component: str
    calibration: dict = field(default_factory=dict)
    progress: Optional[Callable[[str], None]] = None


def _smoothed_tensors(model: "object", tensors: list[str], cfg: SmoothQuantConfig) -> set[str]:
    """The tensors of `tensors` whose producer is one of `cfg.producers`."""
    from edgevl.compress.qdq import value_projection

    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    return {
        t for t in tensors
        if producers.get(t) in cfg.producers or ("Attention" in cfg.producers and value_projection(model, t) is not None)
    }


def _smoothing_factors(
    model: "object", stats: ActivationStats, smoothed: set[str], cfg: SmoothQuantConfig, per_sample_range: bool,
) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """SmoothQuant factors for each tensor of `smoothed`, and (with `cfg.alpha_search`) the alpha
    chosen for each with the simulated SQNR of every alpha tried."""
    from onnx import numpy_helper

    from edgevl.compress.qdq import linear_nodes
    from edgevl.compress.smoothquant import choose_alpha, smoothing_factors

    inits = {i.name: i for i in model.graph.initializer}
    factors: dict[str, np.ndarray] = {}
    searched: dict[str, dict] = {}
    for t, amax in stats.channel_absmax.items():
        if t not in smoothed:
            continue
        ws = [numpy_helper.to_array(inits[l.weight]).astype(np.float32) for l in linear_nodes(model) if l.activation == t]
        alpha = cfg.alpha
        if cfg.alpha_search:
            choice = choose_alpha(stats.samples_of[t], ws, cfg.alpha_search, per_sample_range)
            alpha = choice.alpha
            searched[t] = {"alpha": alpha, "sqnr_db": choice.sqnr_db}
        factors[t] = smoothing_factors(amax, np.max([np.abs(w).max(axis=1) for w in ws], axis=0), alpha)
    return factors, searched


def _w8a8(ctx: QuantContext, cfg: W8A8Config) -> tuple["object", dict]:
    from onnx import numpy_helper

    from edgevl.compress.qdq import apply_recipe, linear_nodes, weight_recipe

    paths = layer_paths(ctx.model)
    feeds = ctx.feeds[: cfg.calib_limit]
    model, passes = _smooth(ctx.model, cfg.smoothquant, feeds, per_sample_range=False)
    layers = linear_nodes(model)
    acts = sorted({l.activation for l in layers})
    stats = collect_stats(model, acts, feeds, cfg.observer)
    inits = {i.name: i for i in model.graph.initializer}
    recipe = QuantRecipe(ctx.component, "int8", config_to_json(cfg), calibration=dict(ctx.calibration))
    local: dict[str, float] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for l in layers:
        path = paths.get(l.name, "")
        excluded = _matches(l.name, path, cfg.exclude)
        if excluded:
            recipe.float_layers[l.name] = f"excluded by config ({excluded!r})"
            continue
        override = next(((lo, hi) for p, lo, hi in cfg.activation_ranges if _matches(l.name, path, (p,))), None)
        if override is not None:
            lo, hi, how = override[0], override[1], "fixed range (config)"
        else:
            lo, hi = stats.observers[l.activation].compute_range()
            how = cfg.observer
        q = qparams_for_range(lo, hi)
        w = numpy_helper.to_array(inits[l.weight]).astype(np.float32)
        wr = weight_recipe(w)
        act = {**q.to_json(), "observer": how}
        recipe.layers[l.name] = LayerRecipe(l.name, l.weight, l.activation, act, wr)
        local[l.name] = _local_sqnr(stats.rows[l.activation], w, act, np.asarray(wr["scales"], np.float32))
        shapes[l.name] = (l.in_features, l.out_features)
    if cfg.speed_guard and shapes:
        timing = speed_guard(set(shapes.values()))
        passes["speed_guard"] = {f"{k}x{n}": v for (k, n), v in timing.items()}
        slow = {
            n: f"int8 measured slower than float on ORT for a {k}x{m} weight "
            f"({timing[(k, m)]['int8_ms']} ms vs {timing[(k, m)]['float_ms']} ms)"
            for n, (k, m) in shapes.items() if timing[(k, m)]["slower"]
        }
        recipe = recipe.without(slow)
    passes["local_sqnr_db"] = {n: round(v, 2) for n, v in sorted(local.items(), key=lambda kv: kv[1])}
    # The gate: move layers back to float, worst local SQNR first, until the parity set passes.
    order = [n for n, _ in sorted(local.items(), key=lambda kv: kv[1]) if n in recipe.layers]
    qmodel, drop, (counts,), gate_report = _gate_loop(
        ctx, order, local, cfg.max_drop, lambda drop: apply_recipe(model, recipe.without(drop))
    )
    candidate = recipe.without(drop)
    passes["gate"] = gate_report
    passes.update(counts)
    return qmodel, {"recipe": candidate, "passes": passes, "paths": paths}


def _gate_loop(
    ctx: QuantContext, order: list[str], local: dict[str, float], max_drop: float,
    build: Callable[[dict[str, str]], tuple["object", Any]],
    reason: Optional[Callable[[str, int], str]] = None,
) -> tuple["object", dict[str, str], tuple, dict]:
    """Build with the first k layers of `order` float, k = 0, 1, 2, 3, 5, 9, ..., until the gate
    passes; returns (model, the layers kept float with why, build's extras, the gate report).
    `reason(name, rank)` says why a layer stayed float (default: its local SQNR)."""
    if reason is None:
        def reason(n: str, rank: int) -> str:
            return f"kept float by the accuracy gate (local SQNR {local[n]:.1f} dB, rank {rank})"
    tried: list[dict] = []
    k, step = 0, 1
    while True:
        drop = {n: reason(n, i + 1) for i, n in enumerate(order[:k])}
        qmodel, extra = build(drop)
        if ctx.gate is None:
            figures, ok = None, True
        else:
            figures = measure(ctx.gate, qmodel)
            ok = gate_passes(figures, ctx.cosine_min, max_drop)
        tried.append({"float_layers": k, **(figures or {})})
        if ctx.progress is not None and figures is not None:
            agree = figures["top1_agreement"]
            ctx.progress(
                f"accuracy gate: {k} of {len(order)} layers float: min cosine {figures['cosine_min']:.4f}"
                + (f", top-1 agreement {agree:.4f}" if agree is not None else "")
                + (" -> passes" if ok else " -> fails")
            )
        if ok:
            report = {"passed": True, "figures": figures, "tried": tried, "cosine_min": ctx.cosine_min,
                      "max_drop": max_drop}
            return qmodel, drop, (extra,), report
        if k >= len(order):
            raise ParityError(
                f"int8 {ctx.component} tower fails the accuracy gate even with every layer float "
                f"({figures}); the float graph around the quantized layers is at fault, report a bug"
            )
        k = min(len(order), k + step)
        step = step * 2 if len(tried) > 2 else step


def _smooth(
    model: "object", cfg: Optional[SmoothQuantConfig], feeds: list, per_sample_range: bool,
) -> tuple["object", dict[str, Any]]:
    """Fold SmoothQuant factors (from per-channel activation maxima on `feeds`) into the graph.
    `per_sample_range`: the runtime quantises activations per call (dynamic), which the alpha
    search simulates."""
    from edgevl.compress.qdq import fold_smoothing, linear_nodes

    if cfg is None:
        return model, {}
    acts = sorted({l.activation for l in linear_nodes(model)})
    smoothed = _smoothed_tensors(model, acts, cfg)
    first = collect_stats(model, acts, feeds, "minmax", keep_rows=1, keep_samples_of=smoothed if cfg.alpha_search else ())
    factors, searched = _smoothing_factors(model, first, smoothed, cfg, per_sample_range)
    model, report = fold_smoothing(model, factors)
    info: dict[str, Any] = {"alpha": cfg.alpha, **report}
    if searched:
        info["alpha"] = "searched per tensor"
        info["alpha_search"] = searched
    return model, {"smoothquant": info}


@register_handler(DynamicW8A8Config)
def _w8a8_dynamic(ctx: QuantContext, cfg: DynamicW8A8Config) -> tuple["object", dict]:
    import tempfile

    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgevl.compress.embed_layernorm import fuse_embed_layernorm
    from edgevl.compress.packed_attention import pack_attention
    from edgevl.compress.qdq import linear_nodes, strip_value_info, weight_recipe

    paths = layer_paths(ctx.model)
    feeds = ctx.feeds[: cfg.calib_limit]
    model, passes = _smooth(ctx.model, cfg.smoothquant, feeds, per_sample_range=True)
    layers = linear_nodes(model)
    stats = collect_stats(model, sorted({l.activation for l in layers}), feeds, "minmax")
    inits = {i.name: i for i in model.graph.initializer}
    recipe = QuantRecipe(ctx.component, "int8", config_to_json(cfg), calibration=dict(ctx.calibration))
    local: dict[str, float] = {}
    for l in layers:
        excluded = _matches(l.name, paths.get(l.name, ""), cfg.exclude)
        if excluded:
            recipe.float_layers[l.name] = f"excluded by config ({excluded!r})"
            continue
        lo, hi = stats.observers[l.activation].compute_range()
        w = numpy_helper.to_array(inits[l.weight]).astype(np.float32)
        wr = weight_recipe(w)
        # Activations are quantised at run time; the calibration range estimates that grid,
        # good enough to rank layers by their local error for the gate.
        estimate = qparams_for_range(lo, hi).to_json()
        recipe.layers[l.name] = LayerRecipe(l.name, l.weight, l.activation, {"dynamic": True, "observed_range": [lo, hi]}, wr)
        local[l.name] = _local_sqnr(stats.rows[l.activation], w, estimate, np.asarray(wr["scales"], np.float32))
    passes["local_sqnr_db"] = {n: round(v, 2) for n, v in sorted(local.items(), key=lambda kv: kv[1])}
    # Q/K/V + attention -> one op ORT quantizes as QAttention; the gate then keeps a packed
    # projection trio float together (one op), ranked by its worst member.
    model, packs, why_not = pack_attention(model, feeds) if cfg.pack_attention else (model, [], "switched off by config")
    passes["qkv_packed"] = len(packs)
    if why_not:
        passes["qkv_packed_skipped"] = why_not
    model, why_not = fuse_embed_layernorm(model, feeds) if cfg.fuse_embedding else (model, "switched off by config")
    passes["embedding_fused"] = why_not is None
    if why_not:
        passes["embedding_fused_skipped"] = why_not
    unit_of = {p: pack.name for pack in packs for p in pack.projections}
    members = {pack.name: pack.projections for pack in packs}
    unit_local: dict[str, float] = {}
    for name, value in local.items():
        unit = unit_of.get(name, name)
        unit_local[unit] = min(value, unit_local.get(unit, np.inf))
    for name in list(recipe.float_layers):
        for other in members.get(unit_of.get(name, ""), ()):
            if other not in recipe.float_layers:
                recipe.float_layers[other] = f"packed with {name} into one attention op, which stays float"
                recipe.layers.pop(other, None)
                unit_local.pop(unit_of[other], None)
    float_units = {unit_of.get(n, n) for n in recipe.float_layers}
    standard_attention = [n.name for n in model.graph.node if (n.domain, n.op_type) == ("", "Attention")]
    work = Path(tempfile.mkdtemp(prefix="edgevl-dynq-"))
    source = work / "smoothed.onnx"
    onnx.save(strip_value_info(model), str(source))

    gptq_cache: dict[str, Any] = {}

    def build(drop: dict[str, str]) -> tuple["object", dict]:
        target = work / "quantized.onnx"
        # ORT's quantizer takes any op named Attention for its own: the standard ones stay out.
        with quiet_ort_quantizer():
            quantize_dynamic(
                str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                op_types_to_quantize=["MatMul", "Attention"] if packs else ["MatMul"],
                nodes_to_exclude=sorted(set(drop) | float_units | set(standard_attention)),
                # onnx's shape inference stops at contrib ops; every tensor here is float.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        quantized = onnx.load(str(target))
        counts = {op: sum(n.op_type == op for n in quantized.graph.node) for op in ("MatMulInteger", "QAttention")}
        if cfg.gptq:
            counts["gptq_rounded_weights"] = _round_weights_with_gptq(quantized, model, feeds, gptq_cache)
        return quantized, counts

    try:
        order = [n for n, _ in sorted(unit_local.items(), key=lambda kv: kv[1])]
        qmodel, drop, (counts,), passes["gate"] = _gate_loop(ctx, order, unit_local, cfg.max_drop, build)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    passes.update(counts)
    if cfg.gptq:
        passes["weight_rounding"] = f"GPTQ on {len(feeds)} calibration samples"
    dropped = {m: why for unit, why in drop.items() for m in members.get(unit, (unit,))}
    return qmodel, {"recipe": recipe.without(dropped), "passes": passes, "paths": paths}


def _round_weights_with_gptq(quantized: "object", source: "object", feeds: list, cache: dict[str, Any]) -> int:
    """Replace the int8 weights ORT's quantizer rounded to nearest with GPTQ's rounding on the
    same per-column scales, in place; returns how many weights. `cache` keeps the input Hessians
    and the rounded weights across the accuracy gate's builds (each is computed once)."""
    from onnx import numpy_helper

    from edgevl.compress.gptq import gptq_int8, input_hessians

    floats = {i.name: i for i in source.graph.initializer}
    ints = {i.name: i for i in quantized.graph.initializer}
    reader = {n.input[1]: n.input[0] for n in source.graph.node if len(n.input) > 1 and n.input[1] in floats}
    todo = {}
    for n in quantized.graph.node:
        if n.op_type not in ("MatMulInteger", "QAttention") or not n.input[1].endswith("_quantized"):
            continue
        base = n.input[1][: -len("_quantized")]
        zero = ints.get(f"{base}_zero_point")
        if base in reader and f"{base}_scale" in ints and zero is not None and not numpy_helper.to_array(zero).any():
            todo[n.input[1]] = base
    if "hessians" not in cache:
        cache["hessians"] = input_hessians(source, [reader[b] for b in todo.values()], feeds)
    for name, base in todo.items():
        if base not in cache:
            weight = numpy_helper.to_array(floats[base]).astype(np.float32)
            scale = numpy_helper.to_array(ints[f"{base}_scale"]).astype(np.float64)
            cache[base] = gptq_int8(weight, cache["hessians"][reader[base]], np.broadcast_to(scale, weight.shape[1:]))
        ints[name].CopyFrom(numpy_helper.from_array(cache[base], name))
    return len(todo)


@register_handler(SmoothQuantConfig)
def _smoothquant_handler(ctx: QuantContext, cfg: SmoothQuantConfig) -> tuple["object", dict]:
    return _w8a8(ctx, W8A8Config(smoothquant=cfg))


register_handler(W8A8Config)(_w8a8)


@register_handler(WeightOnlyConfig)
def _weight_only(ctx: QuantContext, cfg: WeightOnlyConfig) -> tuple["object", dict]:
    from onnx import numpy_helper

    from edgevl.compress.qdq import linear_nodes, weight_only_nbits

    import onnx

    model = ctx.model
    paths = layer_paths(model)
    layers = linear_nodes(model)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)

    def build(raise_to_8: list[str]) -> "object":
        m = onnx.ModelProto.FromString(model.SerializeToString())
        if cfg.bits == 8:
            out, _ = weight_only_nbits(m, 8, cfg.group_size, include_gather=False)
            return out
        out, _ = weight_only_nbits(m, 4, cfg.group_size, include_gather=cfg.embeddings, exclude=raise_to_8)
        if raise_to_8:
            out, _ = weight_only_nbits(out, 8, 128, include_gather=False, exclude=[
                l.name for l in layers if l.name not in raise_to_8])
        return out

    # Rank layers by how much 4-bit blocks hurt their output on calibration activations.
    stats = collect_stats(model, sorted({l.activation for l in layers}), ctx.feeds[:16], "minmax")
    inits = {i.name: i for i in model.graph.initializer}
    err = {}
    for l in layers:
        w = numpy_helper.to_array(inits[l.weight]).astype(np.float32)
        k = w.shape[0] - w.shape[0] % cfg.group_size
        blocks = w[:k].reshape(-1, cfg.group_size, w.shape[1])
        sc = np.abs(blocks).max(1, keepdims=True) / 7
        sc[sc == 0] = 1
        wq = w.copy()
        wq[:k] = (np.clip(np.round(blocks / sc), -8, 7) * sc).reshape(k, -1)
        x = stats.rows[l.activation]
        y, yq = x @ w, x @ wq
        err[l.name] = 10 * np.log10(max(float(np.sum(y**2)), 1e-30) / max(float(np.sum((y - yq) ** 2)), 1e-30))
    order = [n for n, _ in sorted(err.items(), key=lambda kv: kv[1])]
    tried, k, step = [], 0, 2
    precision = f"int{cfg.bits}w"
    while True:
        raised = order[:k] if cfg.bits == 4 else []
        qmodel = build(raised)
        figures = measure(ctx.gate, qmodel) if ctx.gate is not None else None
        ok = figures is None or gate_passes(figures, ctx.cosine_min, cfg.max_drop)
        tried.append({"int8_layers": len(raised), **(figures or {})})
        if ok or cfg.bits == 8:
            break
        if k >= len(order):
            raise ParityError(
                f"{precision} {ctx.component} tower fails the accuracy gate even with every MatMul at 8 bits "
                f"({figures}); the 4-bit embedding tables are at fault: set embeddings=False"
            )
        k = min(len(order), k + step)
        step *= 2
    if not ok:
        raise ParityError(f"{precision} {ctx.component} tower fails the accuracy gate: {figures}")
    recipe = QuantRecipe(ctx.component, precision, config_to_json(cfg), calibration=dict(ctx.calibration))
    for n in order[:k] if cfg.bits == 4 else []:
        recipe.float_layers[n] = f"raised to 8-bit by the accuracy gate (4-bit local SQNR {err[n]:.1f} dB)"
    counts: dict[str, int] = {}
    for node in qmodel.graph.node:
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    passes = {"gate": {"passed": True, "figures": figures, "tried": tried, "cosine_min": ctx.cosine_min,
                       "max_drop": cfg.max_drop},
              "local_sqnr_db_4bit": {n: round(v, 2) for n, v in sorted(err.items(), key=lambda kv: kv[1])},
              **counts}
    return qmodel, {"recipe": recipe, "passes": passes, "paths": paths}


# --------------------------------------------------------------------------------------------
# Entry points


def quantize_model(
    fp32_model: "object", config: QuantConfig, feeds: list[dict[str, np.ndarray]], component: str,
    gate: Optional[GateData], cosine_min: float, calibration: Optional[dict] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> tuple["object", QuantRecipe, dict]:
    """Quantise an fp32 ONNX model in memory: (quantised model, recipe, passes). `progress`
    gets a line per accuracy-gate try."""
    from edgevl.compress.qdq import prepare

    handler = handler_for(config)
    prepared, prep = prepare(fp32_model)
    ctx = QuantContext(prepared, feeds, gate, cosine_min, component, calibration or {}, progress)
    qmodel, info = handler(ctx, config)
    info["passes"] = {**prep, **info["passes"]}
    return qmodel, info["recipe"], info


def quantize_onnx_artifact(
    fp32_path: Path, out_path: Path, spec: "object", component: str, precision: str, calibration: Any,
    max_drop: float = 0.01, progress: Optional[Callable[[str], None]] = None,
) -> dict:
    """The ONNX exporter's hook: write `out_path` (quantised) and its recipe next to it.

    `calibration` is None (bundled real samples), a folder of images, a JSON-lines file, a list
    of texts, or a `CalibrationSet`. A config set on the tower by `quantize_` wins over the
    precision's default. Returns the manifest entry: scheme, observer, layers kept float and
    why, gate figures, recipe path, files.
    """
    import onnx

    from edgevl.calibration.datasets import load_calibration
    from edgevl.tolerances import tolerance_for

    tower = spec.tower(component)
    config = getattr(tower, "quant_config", None)
    if config is None or _precision_of(config) != precision:
        if precision not in PRECISION_CONFIGS:
            raise InputError(f"precision {precision!r} is not a quantised precision; use one of: "
                             f"{', '.join(PRECISION_CONFIGS)}")
        config = PRECISION_CONFIGS[precision](max_drop=max_drop)
    fp32 = onnx.load(str(fp32_path))
    if isinstance(config, DynamicW8A8Config) and getattr(tower, "quant_config", None) is None and _is_conv_tower(fp32):
        config = ConvW8A8Config(max_drop=max_drop)
    if calibration is None:
        calibration = getattr(tower, "calibration", None)
    notes = []
    if calibration is None and precision == "int8":
        notes.append("no --calib given: calibrated on the bundled real samples")
    calib = load_calibration(calibration)
    t0 = time.perf_counter()
    feeds = calib.feeds(spec, component, limit=getattr(config, "calib_limit", 64))
    gate = build_gate_data(spec, component, fp32)
    tol = tolerance_for("onnx", precision)
    qmodel, recipe, info = quantize_model(
        fp32, config, feeds, component, gate, tol.cosine_min, calib.describe(), progress
    )
    out_path = Path(out_path)
    onnx.save_model(qmodel, str(out_path))
    recipe_path = out_path.with_name(out_path.name.replace(".onnx", "") + ".recipe.json")
    recipe.save(recipe_path)
    paths = info.get("paths", {})
    if not recipe.layers and precision == "int8":
        # Say so rather than call a float graph int8 silently.
        why = ("every layer stayed float (float_layers says why)" if recipe.float_layers
               else "no MatMul/Gemm/Conv layers to quantize")
        notes.append(f"{component} tower: {why}; this artifact computes in float")
    fp32_size, q_size = Path(fp32_path).stat().st_size, out_path.stat().st_size
    return {
        "precision": precision,
        "config": config_to_json(config),
        "observer": getattr(config, "observer", None),
        "calibration": calib.describe(),
        "quantized_layers": len(recipe.layers) if recipe.layers else info["passes"].get("MatMulNBits", 0),
        "float_layers": {n: {"module": paths.get(n, ""), "why": why} for n, why in recipe.float_layers.items()},
        "gate": info["passes"].get("gate"),
        "passes": {k: v for k, v in info["passes"].items() if k != "gate"},
        "size_ratio": round(q_size / fp32_size, 4),
        "recipe": str(recipe_path),
        "files": [str(recipe_path)],
        "seconds": round(time.perf_counter() - t0, 1),
        "notes": notes,
    }


def _is_conv_tower(model: "object") -> bool:
    """A tower whose weighted layers are convolutions (no constant-weight MatMul/Gemm)."""
    inits = {i.name for i in model.graph.initializer}
    linear = any(n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits for n in model.graph.node)
    return bool(conv_int8.conv_nodes(model)) and not linear


def _precision_of(config: QuantConfig) -> str:
    if isinstance(config, (W8A8Config, SmoothQuantConfig, DynamicW8A8Config, ConvW8A8Config)):
        return "int8"
    if isinstance(config, WeightOnlyConfig):
        return f"int{config.bits}w"
    return ""


def quantize_(spec: "object", config: QuantConfig, calib: Any = None, components: tuple[str, ...] = ("image", "text")) -> "object":
    """Compress `spec` in place: each named tower carries `config` and its calibration set, which
    the exporters apply to the graph they produce (the recipe depends on that exact graph, so it
    is computed at export time and saved next to the artifact). Returns `spec`."""
    handler_for(config)  # unknown config types fail here, not at export time
    from edgevl.calibration.datasets import load_calibration

    calibration = load_calibration(calib)
    for component in components:
        tower = spec.tower(component)
        tower.quant_config = config
        tower.calibration = calibration
    return spec


# Handlers that live in their own modules register on import.
from edgevl.compress import conv_int8  # noqa: E402,F401  (registers ConvW8A8Config)
