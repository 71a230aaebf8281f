"""edgevl-runtime: run an edgevl export in an app with numpy, Pillow, tokenizers and one runtime
(ONNX Runtime or OpenVINO), no torch.

    from edgevl_runtime import EdgeModel, classify
    model = EdgeModel("out/demo")                      # or runtime="openvino", precision="int8"
    print(classify(model, ["cat.jpg"], ["cat", "dog", "car"])[0].top)
"""

from __future__ import annotations

from edgevl_runtime.classify import LabelBank, Ranking, classify
from edgevl_runtime.errors import AppError, BadInput, MissingRuntime, NoArtifact, RefusedExport
from edgevl_runtime.index import ImageIndex
from edgevl_runtime.model import EdgeModel

__version__ = "0.1.0"
__all__ = ["AppError", "BadInput", "EdgeModel", "ImageIndex", "LabelBank", "MissingRuntime", "NoArtifact",
           "Ranking", "RefusedExport", "classify"]
