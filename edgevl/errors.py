"""Typed errors. Each message names the thing, where it is, and how to fix it (one line)."""

from __future__ import annotations


class EdgevlError(Exception):
    """Base of every error edgevl raises on purpose; the CLI prints it as one line and exits 2."""

    exit_code = 2


class InputError(EdgevlError, ValueError):
    """Bad user input: a path, an option, a file that cannot be used."""


class ModelLoadError(InputError):
    """A model folder or weights file cannot be loaded."""


class UnsupportedModelError(InputError):
    """The checkpoint's architecture is not one edgevl knows how to export."""


class UnknownNameError(InputError):
    """A name looked up in a registry (model, target, precision) does not exist."""


class MissingBackendError(EdgevlError, RuntimeError):
    """An optional SDK is not installed; the message names the pip extra that installs it."""


class ExportError(EdgevlError, RuntimeError):
    """An exporter could not produce a valid artifact."""


class UnfusedAttentionError(ExportError):
    """Some attention blocks did not become one fused op on the target."""


class ParityError(EdgevlError, RuntimeError):
    """An artifact disagrees with the PyTorch reference beyond its tolerance."""

    exit_code = 3


class NothingCompressedError(ParityError):
    """A compressed precision (int8, int8w, int4w, palettize4) whose accuracy gate kept every
    compressible layer of a tower float: the artifact would be a float tower under a compressed
    name. Nothing is written unless the user allows the float fallback."""


class CalibrationError(InputError):
    """A calibration set is empty, unreadable, or produced non-finite activations."""


class OutputWriteError(EdgevlError):
    """The export could not be written (disk full, file-size limit, folder not writable); the
    staging folder is removed and nothing is published."""
