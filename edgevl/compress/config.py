"""Quantisation configs: frozen, validated in `__post_init__` with a message that says how to fix
it, serialisable to JSON for the manifest (torchao's `AOBaseConfig` habit). Each config names the
CLI precision it implements; its handler is found by its type (`edgevl.compress.handlers`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Callable, ClassVar, Optional

from edgevl.calibration.observers import OBSERVERS
from edgevl.errors import InputError

# Which x86 int8 dot product an artifact may rely on. "any": CPUs without VNNI (AVX2, AVX-512
# without VNNI) add u8 x s8 products in pairs into int16 with saturation (vpmaddubsw), so int8
# weights stay within 7 bits (|w| <= 64: a pair sums to at most 2 * 255 * 64 = 32640 <= 32767)
# and the artifact computes the same numbers on every x86 CPU. "vnni": the deployment CPU has
# AVX512-VNNI, AVX-VNNI or AMX (exact int32 dot products): full 8-bit weights.
CPU_ISAS = ("any", "vnni")
# Core ML palettize4: fine-tuning steps around the palettes (`edgevl.compress.palette_tune`).
DEFAULT_PALETTE_TUNE_STEPS = 400
INT16_MAX = 32767
UINT8_MAX = 255


def weight_qmax(cpu_isa: str) -> int:
    """Largest |int8 weight| an artifact for `cpu_isa` may hold."""
    check_cpu_isa(cpu_isa)
    return 127 if cpu_isa == "vnni" else INT16_MAX // (2 * UINT8_MAX)


def check_cpu_isa(cpu_isa: str) -> None:
    if cpu_isa not in CPU_ISAS:
        raise InputError(f"unknown cpu_isa {cpu_isa!r}; use one of: {', '.join(CPU_ISAS)}")


@dataclass(frozen=True)
class QuantConfig:
    """Base of every quantisation config. `precision` is the `--precision` value it implements."""

    precision: ClassVar[str] = ""

    def __post_init__(self) -> None:
        max_drop = getattr(self, "max_drop", None)
        if max_drop is not None and not 0.0 <= max_drop < 1.0:
            raise InputError(f"max_drop {max_drop} must be in [0, 1) (e.g. 0.01)")

    def to_json(self) -> dict:
        data = json.loads(json.dumps(asdict(self)))  # tuples -> lists, as the JSON reads back
        data["type"] = type(self).__name__
        return data


@dataclass(frozen=True)
class CalibratedInt8Config(QuantConfig):
    """Base of the int8 configs calibrated on samples; each declares `cpu_isa` (int8 dot-product
    semantics the artifact may rely on) and `calib_limit` (samples observed, at least one)."""

    precision: ClassVar[str] = "int8"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_cpu_isa(self.cpu_isa)
        if self.calib_limit < 1:
            raise InputError(f"calib_limit {self.calib_limit} must be at least 1")


@dataclass(frozen=True)
class SmoothQuantConfig(QuantConfig):
    """Static W8A8 with SmoothQuant (the settings of the smoothing itself): migrate activation outliers into the weights before int8.

    Attributes:
        alpha: migration strength in [0, 1]; 0 = none, 1 = all of the range onto the weights.
        producers: what produces the activations that are smoothed (where outlier channels
            live): ONNX op types, "QuickGelu" for CLIP's `x * sigmoid(1.702 x)`, and
            "Attention" for an attention output merged back to `[B, S, H*D]`, whose factors
            fold into the V projection for free.
        alpha_search: if given, each smoothed tensor takes the alpha of this grid whose
            simulated int8 output is closest to float on the calibration samples (see
            edgevl/compress/smoothquant.py); `alpha` is then unused. Empty: `alpha` everywhere.
    """

    alpha: float = 0.7
    producers: tuple[str, ...] = ("LayerNormalization", "Gelu", "QuickGelu", "Attention")
    alpha_search: tuple[float, ...] = ()

    precision: ClassVar[str] = "int8"

    def __post_init__(self) -> None:
        for a in (self.alpha, *self.alpha_search):
            if not 0.0 <= a <= 1.0:
                raise InputError(f"SmoothQuant alpha {a} must be in [0, 1] (try 0.5 to 0.8)")


@dataclass(frozen=True)
class W8A8Config(CalibratedInt8Config):
    """Static int8: int8 weights (per output channel, symmetric), uint8 activations (per tensor).

    Attributes:
        observer: activation range observer, one of minmax, percentile, entropy, mse.
        smoothquant: SmoothQuant settings, or None to switch it off (some towers, e.g. CLIP's,
            are reported to do better without it: measure).
        max_drop: largest allowed drop of zero-shot top-1 agreement, on the gate split for the
            gate and on the parity split for the verdict (the cosine floor comes from
            edgevl/tolerances.py).
        speed_guard: keep float the layer shapes where int8 is measured slower on ORT on the
            building machine (off by default: it makes the artifact depend on that machine).
        cpu_isa: int8 dot-product semantics the artifact may rely on (see CPU_ISAS).
        exclude: layer names (ONNX node or module path, substring match) that stay float.
        activation_ranges: fixed activation ranges `((layer substring, lo, hi), ...)` that
            override the observer; meant for experts and for testing the gate.
        calib_limit: at most this many calibration samples are observed.
        embeddings: ONNX: store token-embedding tables read by a Gather as int8 rows with one
            scale per row (edgevl/compress/embedding_int8.py) when the gate still passes.
    """

    observer: str = "minmax"
    smoothquant: Optional[SmoothQuantConfig] = SmoothQuantConfig()
    max_drop: float = 0.01
    speed_guard: bool = False
    exclude: tuple[str, ...] = ()
    activation_ranges: tuple[tuple[str, float, float], ...] = ()
    calib_limit: int = 64
    cpu_isa: str = "any"
    embeddings: bool = True

    def __post_init__(self) -> None:
        if self.observer not in OBSERVERS:
            raise InputError(f"unknown observer {self.observer!r}; use one of: {', '.join(OBSERVERS)}")
        super().__post_init__()


@dataclass(frozen=True)
class WeightOnlyConfig(QuantConfig):
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

    @property
    def precision(self) -> str:  # type: ignore[override]
        return f"int{self.bits}w"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits not in (4, 8):
            raise InputError(f"weight-only bits {self.bits} not supported; use 8 or 4")
        if self.group_size < 16 or self.group_size & (self.group_size - 1):
            raise InputError(f"group_size {self.group_size} must be a power of two >= 16 (e.g. 32, 128)")


@dataclass(frozen=True)
class DynamicW8A8Config(CalibratedInt8Config):
    """int8 weights (per output channel, symmetric) with activations quantised at run time, per
    tensor (ONNX Runtime's MatMulInteger path), after SmoothQuant (alpha per tensor) moved
    activation outliers into the weights, weights rounded with GPTQ; each block's Q/K/V
    projections packed with its attention into one op that ORT runs as `QAttention`, the BERT
    embedding fused into `EmbedLayerNormalization`. The default for `--precision int8` on ONNX.

    Why this scheme, with figures: benchmarks/results/onnx_int8.md and docs/compression-and-gate.md.
    Calibration sets the SmoothQuant factors, the GPTQ rounding and the gate's layer ranking.

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
        cpu_isa: int8 dot-product semantics the artifact may rely on (see CPU_ISAS).
        embeddings: store token-embedding tables read by a Gather as int8 rows with one scale
            per row (edgevl/compress/embedding_int8.py) when the gate still passes; a table
            fused into EmbedLayerNormalization (ort flavour) stays float.
    """

    smoothquant: Optional[SmoothQuantConfig] = SmoothQuantConfig(alpha_search=(0.5, 0.6, 0.7, 0.8, 0.9))
    max_drop: float = 0.01
    exclude: tuple[str, ...] = ()
    calib_limit: int = 64
    pack_attention: bool = True
    fuse_embedding: bool = True
    gptq: bool = True
    cpu_isa: str = "any"
    embeddings: bool = True


@dataclass(frozen=True)
class ConvW8A8Config(CalibratedInt8Config):
    """Static int8 for convolutional towers on ONNX Runtime: per-output-channel int8 weights,
    per-tensor uint8 activations, Q/DQ around every Conv and residual Add; the earliest
    convolutions stay float until the accuracy gate passes. `--precision int8` picks it for a
    tower whose weighted layers are convolutions.

    uint8 activations let ONNX Runtime run every conv, depthwise included, as one int8 chain;
    sensitivity falls with depth, so the gate keeps a float prefix (figures:
    benchmarks/results/onnx_int8.md).

    Attributes:
        max_drop: as in W8A8Config.
        speed_guard: keep the whole tower float when the int8 graph is not measured at least
            `min_speedup` x faster than fp32 on the building machine (whole-graph timing: the
            cost is in the layout changes between int8 and float layers). Off by default: it
            makes the artifact depend on the machine that builds it.
        min_speedup: see speed_guard.
        calib_limit: at most this many calibration samples are observed.
        cpu_isa: int8 dot-product semantics the artifact may rely on (see CPU_ISAS).
    """

    max_drop: float = 0.01
    speed_guard: bool = False
    min_speedup: float = 1.1
    calib_limit: int = 64
    cpu_isa: str = "any"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_speedup <= 0:
            raise InputError(f"min_speedup {self.min_speedup} must be positive (e.g. 1.1)")


PRECISION_CONFIGS: dict[str, Callable[..., QuantConfig]] = {
    "int8": DynamicW8A8Config,
    "int8w": lambda **kw: WeightOnlyConfig(bits=8, group_size=128, embeddings=False, **kw),
    "int4w": lambda **kw: WeightOnlyConfig(bits=4, group_size=32, **kw),
}
