"""Adapters from a list of tower feeds to the two toolkits' calibration interfaces, so users of
ONNX Runtime's or NNCF's own quantizers calibrate on exactly what edgevl calibrates on."""

from __future__ import annotations

from typing import Optional

import numpy as np

from edgevl.errors import CalibrationError


def _check(feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    if not feeds:
        raise CalibrationError("calibration feeds are empty; a calibration set needs at least one sample")
    return list(feeds)


def ort_reader(feeds: list[dict[str, np.ndarray]], input_names: Optional[list[str]] = None) -> "object":
    """An `onnxruntime.quantization.CalibrationDataReader` over `feeds` (rewindable)."""
    from onnxruntime.quantization import CalibrationDataReader

    items = _check(feeds)
    if input_names is not None:
        items = [{k: f[k] for k in input_names} for f in items]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._i = 0

        def get_next(self) -> Optional[dict]:
            if self._i >= len(items):
                return None
            self._i += 1
            return items[self._i - 1]

        def rewind(self) -> None:
            self._i = 0

        def __len__(self) -> int:
            return len(items)

    return _Reader()


def nncf_dataset(feeds: list[dict[str, np.ndarray]], input_names: Optional[list[str]] = None) -> "object":
    """An `nncf.Dataset` yielding each feed dict (OpenVINO models take dicts by input name)."""
    import nncf

    items = _check(feeds)
    if input_names is not None:
        items = [{k: f[k] for k in input_names} for f in items]
    return nncf.Dataset(items)
