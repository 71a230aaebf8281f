"""The optimum-intel pipeline a user would otherwise pick for OpenVINO, run in the peers' own
virtual environment (`benchmarks/peers_setup.sh`). Writes, under OUT:

- `fp32/openvino_model.xml`: `OVModelForZeroShotImageClassification.from_pretrained(export=True)`
  with optimum-intel's defaults (both towers in one IR, as optimum-intel exports CLIP);
- `int8w/`: the same export with `OVWeightQuantizationConfig(bits=8)` (int8 weight compression);
- `int8/`: `OVQuantizer.quantize` with `OVQuantizationConfig()` (NNCF int8 weights and
  activations), calibrated on CALIB (an .npz of the calibration split written by `peers.py`:
  `pixel_values`, `input_ids`, `attention_mask`; the hub data set optimum-intel would download
  is not reachable offline);
- `peer.json`: versions and each step's seconds.

    <peer-venv>/bin/python benchmarks/peer_optimum_intel.py CHECKPOINT OUT CALIB.npz
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    checkpoint, out, calib = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    import nncf
    import numpy as np
    import openvino
    import transformers
    from optimum.intel import OVConfig, OVQuantizationConfig, OVQuantizer, OVWeightQuantizationConfig
    from optimum.intel.openvino.modeling import OVModelForZeroShotImageClassification as OVClip

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    model = OVClip.from_pretrained(checkpoint, export=True, compile=False)
    model.save_pretrained(out / "fp32")
    seconds["export"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    weights = OVClip.from_pretrained(checkpoint, export=True, compile=False,
                                     quantization_config=OVWeightQuantizationConfig(bits=8))
    weights.save_pretrained(out / "int8w")
    seconds["int8w"] = time.perf_counter() - t0

    data = np.load(calib)
    items = [{"pixel_values": data["pixel_values"][i:i + 1], "input_ids": data["input_ids"][i:i + 1],
              "attention_mask": data["attention_mask"][i:i + 1]}
             for i in range(min(len(data["pixel_values"]), len(data["input_ids"])))]
    t0 = time.perf_counter()
    quantizer = OVQuantizer.from_pretrained(OVClip.from_pretrained(out / "fp32", compile=False))
    quantizer.quantize(calibration_dataset=nncf.Dataset(items), save_directory=out / "int8",
                       ov_config=OVConfig(quantization_config=OVQuantizationConfig(num_samples=len(items))))
    seconds["int8"] = time.perf_counter() - t0

    (out / "peer.json").write_text(json.dumps({
        "transformers": transformers.__version__, "openvino": openvino.__version__, "nncf": nncf.__version__,
        "calibration_pairs": len(items), "seconds": {k: round(v, 1) for k, v in seconds.items()}}, indent=1))


if __name__ == "__main__":
    main()
