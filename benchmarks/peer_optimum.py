"""The Hugging Face optimum pipeline a user would otherwise pick for ONNX Runtime, run in the
peers' own virtual environment (`benchmarks/peers_setup.sh`: optimum-onnx pins transformers<4.58,
edgevl needs >=5). Writes, under OUT:

- `fp32/model.onnx`: `optimum.exporters.onnx.main_export(..., task="zero-shot-image-classification")`
  (both towers in one graph, as optimum exports CLIP);
- `optimized/model_optimized.onnx`: `ORTOptimizer` at optimization level 2 (ORT's transformer
  fusions, attention included where it matches);
- `int8-pt/`, `int8-pc/`: `ORTQuantizer` dynamic int8 (per-tensor, per-channel) of the fp32 export,
  with the `AutoQuantizationConfig` preset for this CPU (avx512_vnni where it has VNNI). Quantizing
  the optimized graph fails in ORT's quantizer (shape inference has no type for the outputs of
  ORT's contrib ops), so the exported graph is quantized, as optimum's own examples do;
- `peer.json`: versions, the preset used and each step's seconds.

    <peer-venv>/bin/python benchmarks/peer_optimum.py CHECKPOINT OUT
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    checkpoint, out = sys.argv[1], Path(sys.argv[2])
    import onnxruntime
    import optimum
    import transformers
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTOptimizer, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig, OptimizationConfig

    flags = set(Path("/proc/cpuinfo").read_text().split())
    preset = "avx512_vnni" if "avx512_vnni" in flags else "avx2"
    seconds: dict[str, float] = {}

    # Steps whose output is already there (a rerun on the same OUT) are not repeated nor timed.
    if not (out / "fp32" / "model.onnx").is_file():
        t0 = time.perf_counter()
        main_export(checkpoint, out / "fp32", task="zero-shot-image-classification", do_validation=False)
        seconds["export"] = time.perf_counter() - t0
    if not (out / "optimized" / "model_optimized.onnx").is_file():
        t0 = time.perf_counter()
        optimizer = ORTOptimizer.from_pretrained(out / "fp32", file_names=["model.onnx"])
        optimizer.optimize(OptimizationConfig(optimization_level=2), save_dir=out / "optimized")
        seconds["optimize"] = time.perf_counter() - t0

    for label, per_channel in (("int8-pt", False), ("int8-pc", True)):
        t0 = time.perf_counter()
        quantizer = ORTQuantizer.from_pretrained(out / "fp32", file_name="model.onnx")
        config = getattr(AutoQuantizationConfig, preset)(is_static=False, per_channel=per_channel)
        quantizer.quantize(save_dir=out / label, quantization_config=config)
        seconds[label] = time.perf_counter() - t0

    (out / "peer.json").write_text(json.dumps({
        "optimum": optimum.__version__ if hasattr(optimum, "__version__") else "?",
        "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__,
        "preset": preset, "seconds": {k: round(v, 1) for k, v in seconds.items()}}, indent=1))


if __name__ == "__main__":
    main()
