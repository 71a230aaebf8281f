"""A reference interpreter for Core ML ML Programs, in numpy: it reads a saved `.mlpackage`'s
program back with coremltools' milproto loader and executes the main function op by op, each op
as coremltools' op definitions specify it (`mil_ops`, `mil_nn`).

Precision: each op computes in float32 (or in its integer / bool type) and its result is rounded
to the dtype the program declares for that output, so an fp16 program is rounded to fp16 after
every op, as Core ML stores fp16 intermediates; a value beyond fp16's range (65504) becomes inf
there, as it does on the device. It is a labelled reference, not Core ML: it cannot reproduce a
device's accumulation order or its fused kernels. An op it has no kernel for is an error naming it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edgevl.errors import InputError
from edgevl.runtimes.mil_nn import NN_OPS
from edgevl.runtimes.mil_ops import ELEMENTWISE_OPS, TENSOR_OPS, Kernel

KERNELS: dict[str, Kernel] = {**TENSOR_OPS, **ELEMENTWISE_OPS, **NN_OPS}

# Called after each op with the op and its outputs (the fp16 guard watches values with it).
Observer = Callable[[Any, tuple], None]


class UnsupportedOpError(NotImplementedError):
    """The program holds an op the interpreter has no kernel for."""


def import_coremltools() -> Any:
    """coremltools, imported with its import-time warnings (untested torch / scikit-learn
    versions, the macOS-only prediction library missing) kept out of edgevl's output."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import coremltools
    finally:
        logger.setLevel(level)
    return coremltools


def load_program(path: Path) -> Any:
    """The MIL program of a saved `.mlpackage` (weights read from its weights folder)."""
    ct = import_coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load

    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise InputError(f"{path} is not an ML Program (.mlpackage); edgevl's interpreter runs ML Programs only")
    return load(spec, spec.specificationVersion, model.weights_dir)


def _np_dtype(var: Any) -> Any:
    from coremltools.converters.mil.mil import types

    return types.nptype_from_builtin(var.dtype)


class MilInterpreter:
    """Runs a MIL program's `main` function on numpy feeds."""

    def __init__(self, program: Any) -> None:
        self.function = program.functions["main"]
        self.input_names = list(self.function.inputs)
        self.output_names = [v.name for v in self.function.outputs]
        self.input_dtypes = {n: _np_dtype(v) for n, v in self.function.inputs.items()}

    def op_types(self) -> list[str]:
        return [op.op_type for op in self.function.operations]

    def run(self, feeds: dict[str, np.ndarray], observe: Optional[Observer] = None) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InputError(
                f"Core ML program needs inputs {', '.join(missing)}; it takes: {', '.join(self.input_names)}"
            )
        env: dict[str, Any] = {n: np.asarray(feeds[n]).astype(self.input_dtypes[n]) for n in self.input_names}
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for op in self.function.operations:
                outputs = execute_op(op, env)
                for var, value in zip(op.outputs, outputs):
                    env[var.name] = value
                if observe is not None:
                    observe(op, outputs)
        return {n: np.asarray(env[n]) for n in self.output_names}


def execute_op(op: Any, env: dict[str, Any]) -> tuple:
    """Run one MIL op on the values in `env` (var name -> value; constants come from the op's
    inputs); its outputs, rounded to the dtypes the program declares."""
    if op.op_type == "const":
        return (_const(op.outputs[0]),)
    kernel = KERNELS.get(op.op_type)
    if kernel is None:
        raise UnsupportedOpError(
            f"MIL op {op.op_type!r} (op {op.name!r}) has no kernel in edgevl's reference interpreter"
        )
    args = {name: _value(var, env) for name, var in op.inputs.items()}
    result = kernel(args)
    results = result if isinstance(result, tuple) else (result,)
    return tuple(_declared(np.asarray(r), var) for r, var in zip(results, op.outputs))


def _value(var: Any, env: dict[str, Any]) -> Any:
    if isinstance(var, (list, tuple)):
        return [_value(v, env) for v in var]
    value = env[var.name] if var.name in env else _const(var)
    if isinstance(value, (np.ndarray, np.floating)) and value.dtype == np.float16:
        return value.astype(np.float32)  # compute wide, round the result (see module doc)
    return value


def _const(var: Any) -> Any:
    value = var.val
    if value is None:
        raise UnsupportedOpError(f"value {var.name!r} is neither computed nor constant")
    if isinstance(value, (str, bool)) or (isinstance(value, np.ndarray) and value.dtype.kind in "OUS"):
        return value
    return np.asarray(value).astype(_np_dtype(var))


def _declared(value: np.ndarray, var: Any) -> np.ndarray:
    dtype = _np_dtype(var)
    return value if value.dtype == dtype else value.astype(dtype)


def load_interpreter(path: Path) -> MilInterpreter:
    return MilInterpreter(load_program(path))
