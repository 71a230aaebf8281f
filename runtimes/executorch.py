"""ExecuTorch (`executorch.runtime`, the Python bindings of the C++ runtime, with the XNNPACK
delegate and the portable kernels it links).

A `.pte` program's `forward` takes positional tensors; their names come from the artifact's
runtime options (`input_names`, `output_names`, written by the exporter), else `input_0`, ...
Feeds are numpy: integer arrays become int64, float arrays float32.

Options (all optional):
    input_names / output_names  the tower's input and output names, in the program's order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np

from edgevl.errors import InputError
from edgevl.registry import register_runtime
from edgevl.runtimes.base import LoadedModel, Runtime


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _EtModel(LoadedModel):
    def __init__(self, program: Union[Path, bytes], options: dict[str, Any]) -> None:
        # Registers the quantize / dequantize kernels an int8 program runs outside the delegate;
        # without it such a program fails to load in a process that never lowered one.
        import executorch.kernels.quantized  # noqa: F401
        from executorch.runtime import Runtime as EtRuntime

        where = str(program) if isinstance(program, Path) else "the in-memory program"
        try:
            loaded = EtRuntime.get().load_program(program if isinstance(program, bytes) else str(program))
            self._method = loaded.load_method("forward")
        except Exception as exc:  # the bindings raise RuntimeError / ValueError for bad bytes
            raise InputError(
                f"{where} is not a valid ExecuTorch program ({_first_line(exc)}); "
                "re-export it with: edgevl export --target executorch"
            ) from None
        if self._method is None:
            raise InputError(f"{where} has no 'forward' method; re-export it with: edgevl export --target executorch")
        meta = self._method.metadata
        n_in, n_out = meta.num_inputs(), meta.num_outputs()
        self.input_names = list(options.get("input_names") or [f"input_{i}" for i in range(n_in)])
        self.output_names = list(options.get("output_names") or [f"output_{i}" for i in range(n_out)])
        if len(self.input_names) != n_in:
            raise InputError(
                f"{where} takes {n_in} inputs but its runtime options name {len(self.input_names)}: "
                f"{', '.join(self.input_names)}"
            )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InputError(
                f"ExecuTorch program needs inputs {', '.join(missing)}; it takes: {', '.join(self.input_names)}"
            )
        args = []
        for name in self.input_names:
            value = np.asarray(feeds[name])
            value = value.astype(np.int64 if np.issubdtype(value.dtype, np.integer) else np.float32, copy=False)
            args.append(torch.from_numpy(np.ascontiguousarray(value)))
        try:
            outs = self._method.execute(args)
        except Exception as exc:
            shapes = ", ".join(f"{n}{list(a.shape)}" for n, a in zip(self.input_names, args))
            raise InputError(
                f"ExecuTorch could not run the program on {shapes} ({_first_line(exc)}); "
                "a static-shape program takes only the sizes it was exported with"
            ) from None
        return {name: out.detach().numpy().copy() for name, out in zip(self.output_names, outs)}


def load_program(program: Union[Path, bytes], options: dict[str, Any] | None = None) -> LoadedModel:
    """A `.pte` file or its bytes (the exporter's candidates, before they are written)."""
    return _EtModel(program, dict(options or {}))


@register_runtime("executorch")
class ExecuTorchRuntime(Runtime):
    name = "executorch"
    requires = ("executorch",)
    extra = "executorch"

    def _load(self, path: Path, options: dict[str, Any]) -> LoadedModel:
        if path.suffix != ".pte":
            raise InputError(f"{path} is not an ExecuTorch program; pass the .pte file")
        return _EtModel(path, options)
