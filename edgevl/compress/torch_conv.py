"""Cross-layer equalization and bias correction for a PyTorch convolutional tower, for quantizers
that work on the torch module (PT2E for ExecuTorch). The arithmetic is `edgevl.compress.equalize`'s,
run on an ONNX copy of the tower, and the conditioned weights are written back into the module.

1. `fold_batchnorm`: every BatchNorm2d that reads a Conv2d's output only is folded into that conv
   (found on the exported graph, so the pairing is by data flow, not by attribute names), and
   becomes an identity. Exact up to float rounding; checked on an example.
2. `ConvConditioner`: the folded tower exported to ONNX (`torch.onnx.export`, dynamo), whose
   initializers keep the parameters' names; `equalize(..., relu6=False)` rescales the linear
   conv -> conv pairs there, and `input_means` measures each conv's input means on the
   calibration feeds once. `apply(int8_convs)` writes the equalized weights and, for the convs a
   candidate quantizes, the bias-corrected biases into a copy of the module.

Bias correction models the activation as uint8 min-max over the calibration feeds and the weights
as symmetric per-channel int8 (qmax 127), as XNNPACK's quantizer quantizes weights; the activation
part is an estimate where the quantizer's observer picks another range.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# XNNPACK's per-channel symmetric int8 weights use [-127, 127].
WEIGHT_QMAX = 127


def module_path(node: Any) -> str:
    """The module path an exported graph node came from ("" when none)."""
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    return path[len("L['self']."):] if path.startswith("L['self'].") else path


def fold_batchnorm(module: Any, examples: dict) -> tuple[Any, list[str]]:
    """A copy of `module` with each Conv2d -> BatchNorm2d pair (the conv's output read by the
    BatchNorm only) folded into the conv; returns it and the convs folded into."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    module = copy.deepcopy(module).eval()
    with torch.no_grad():
        graph = torch.export.export(module, (), kwargs=examples).graph
    modules = dict(module.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_function" or "batch_norm" not in str(node.target):
            continue
        src = node.args[0]
        if not hasattr(src, "target") or "conv" not in str(src.target) or len(src.users) != 1:
            continue
        conv, bn = modules.get(module_path(src)), modules.get(module_path(node))
        if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
            pairs.append((module_path(src), module_path(node)))
    for conv_path, bn_path in pairs:
        fused = fuse_conv_bn_eval(modules[conv_path], modules[bn_path])
        _set_submodule(module, conv_path, fused)
        _set_submodule(module, bn_path, torch.nn.Identity())
    return module, [c for c, _ in pairs]


def _set_submodule(root: Any, path: str, value: Any) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, value)


class ConvConditioner:
    """Equalization (once) and per-candidate bias correction of a BN-folded conv tower."""

    def __init__(self, module: Any, examples: dict, dynamic: Any, input_names: list[str], output_name: str,
                 feeds: list[dict[str, np.ndarray]]) -> None:
        import onnx
        import torch

        from edgevl.compress.equalize import equalize, input_means

        self.module = module
        with tempfile.TemporaryDirectory(prefix="edgevl-etq-") as work, torch.no_grad():
            path = Path(work) / "tower.onnx"
            program = torch.onnx.export(module, (), kwargs=examples, dynamo=True, dynamic_shapes=dynamic,
                                        input_names=input_names,
                                        output_names=[output_name], optimize=True, verbose=False)
            program.save(str(path))
            model = onnx.load(str(path))
        model.ir_version = min(model.ir_version, 10)
        params = dict(module.named_parameters())
        # Conv node -> (its module path, weight and bias initializer names), convs with torch weights only.
        self.convs: dict[str, tuple[str, str, str]] = {}
        for node in model.graph.node:
            if node.op_type == "Conv" and len(node.input) > 2 and node.input[1] in params and node.input[2] in params:
                self.convs[node.name] = (node.input[1].rsplit(".", 1)[0], node.input[1], node.input[2])
        self.model, self.report = equalize(model, feeds, relu6=False)
        self.means = input_means(self.model, feeds, list(self.convs))

    def order(self) -> list[str]:
        """The conditioned convs' module paths in graph (depth) order."""
        return [path for path, _, _ in self.convs.values()]

    def apply(self, int8_convs: list[str]) -> Any:
        """A copy of the module with the equalized weights, and the biases of the convs in
        `int8_convs` (module paths) corrected for their int8 error."""
        import torch

        from onnx import numpy_helper

        from edgevl.compress.equalize import correct_bias
        from edgevl.compress.ort_graph import initializers

        nodes = [n for n, (path, _, _) in self.convs.items() if path in set(int8_convs)]
        inits = initializers(correct_bias(self.model, self.means, nodes, WEIGHT_QMAX))

        module = copy.deepcopy(self.module)
        params = dict(module.named_parameters())
        with torch.no_grad():
            for _, weight, bias in self.convs.values():
                for name in (weight, bias):
                    params[name].copy_(torch.from_numpy(numpy_helper.to_array(inits[name]).copy()))
        return module
