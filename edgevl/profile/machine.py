"""This machine's CPU facts and its measured GEMM peak, cached per CPU model and ISA flags.

The peak probe times square matrix products large enough to be compute-bound:
  fp32: numpy's BLAS `a @ b` and ONNX Runtime's MatMul (the faster of the two is the fp32 peak);
  int8: ONNX Runtime's MatMulInteger, uint8 activations x int8 weights (the kernel its dynamic and
        static int8 graphs use), counted as 2*M*K*N integer operations.
Each figure is the best of repeated runs over a short time, so it is the machine's attainable
dense-GEMM rate with all of the process's threads, not a datasheet number.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from edgevl.models.spec import default_cache_dir

PEAK_FILE = "peak.json"
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "bf16")
# Flags that give int8 dot products a native instruction (u8*s8 accumulated in int32).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
PROBE_SIZE = 1024
PROBE_SECONDS = 0.6


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: tuple[str, ...]  # the ISA_FLAGS this CPU has
    logical_cores: int
    usable_cores: int  # cores this process may run on (affinity)
    mhz: Optional[float]

    @property
    def int8_dot(self) -> bool:
        return any(f in self.flags for f in INT8_DOT_FLAGS)

    @property
    def key(self) -> str:
        return f"{self.model} | {','.join(self.flags)} | {self.usable_cores} cores"


def cpu_info() -> CpuInfo:
    """From /proc/cpuinfo on Linux; elsewhere the platform's processor name and no flags."""
    model, flags, mhz = platform.processor() or platform.machine(), set(), None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in ("model name", "Model", "Hardware") and value:
            model = value
        elif key in ("flags", "Features"):
            flags |= set(value.split())
        elif key == "cpu MHz" and mhz is None:
            try:
                mhz = float(value)
            except ValueError:
                pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CpuInfo(model=model, flags=tuple(f for f in ISA_FLAGS if f in flags),
                   logical_cores=os.cpu_count() or 1, usable_cores=usable, mhz=mhz)


@dataclass(frozen=True)
class Peak:
    """Attainable GEMM rates in FLOP/s (int8: integer ops/s); None when not measured here."""

    fp32: float
    int8: Optional[float]
    bf16: Optional[float]
    fp32_source: str
    int8_source: str
    bf16_source: str
    size: int

    def for_precision(self, precision: str) -> tuple[Optional[float], str]:
        """The peak an artifact of `precision` is measured against, and which peak it is:
        int8 (w8a8) graphs against the int8 peak, everything else (fp32, weight-only int8/int4
        that dequantize to float) against fp32."""
        if precision == "int8" and self.int8 is not None:
            return self.int8, "int8"
        return self.fp32, "fp32"


def best_rate(work: Callable[[], object], flops: float, seconds: float = PROBE_SECONDS) -> float:
    """flops / the fastest of repeated calls of `work` within about `seconds` (one warm-up first)."""
    work()
    best = float("inf")
    end = time.perf_counter() + seconds
    runs = 0
    while runs < 3 or time.perf_counter() < end:
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
        runs += 1
    return flops / best


def probe_peak(size: int = PROBE_SIZE) -> Peak:
    """Time the GEMMs the module docstring names; takes a few seconds."""
    rng = np.random.default_rng(0)
    flops = 2.0 * size ** 3
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    rates = {"numpy BLAS fp32 matmul": best_rate(lambda: a @ b, flops)}
    int8, int8_source = None, "not measured: onnxruntime is not installed"
    try:
        from edgevl.profile.probe_graphs import matmul_session
    except ImportError:
        matmul_session = None
    if matmul_session is not None:
        fp32_run = matmul_session("MatMul", size)
        rates["ONNX Runtime fp32 MatMul"] = best_rate(fp32_run, flops)
        int8_run = matmul_session("MatMulInteger", size)
        int8, int8_source = best_rate(int8_run, flops), "ONNX Runtime MatMulInteger u8 x s8"
    source = max(rates, key=rates.get)
    return Peak(fp32=rates[source], int8=int8, bf16=None, fp32_source=source, int8_source=int8_source,
                bf16_source="not measured: the probe times fp32 and int8; bf16 artifacts are set against the fp32 peak",
                size=size)


def load_or_probe_peak(cpu: CpuInfo, cache_dir: Optional[Path] = None) -> tuple[Peak, bool]:
    """The cached peak for this CPU (same model, flags and core count), else a fresh probe that is
    then cached; returns (peak, True if it came from the cache)."""
    path = (cache_dir or default_cache_dir()) / PEAK_FILE
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    entry = cached.get(cpu.key)
    if isinstance(entry, dict):
        try:
            return Peak(**entry["peak"]), True
        except (KeyError, TypeError):
            pass
    peak = probe_peak()
    cached[cpu.key] = {"cpu": asdict(cpu), "peak": asdict(peak), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{PEAK_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(cached, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs a probe next time
    return peak, False
