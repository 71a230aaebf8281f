"""Errors the library raises on purpose; each message is one line that names the thing and the fix."""

from __future__ import annotations


class AppError(Exception):
    """Base of every error edgevl_runtime raises on purpose; the CLI prints it and exits 2."""

    exit_code = 2


class RefusedExport(AppError, ValueError):
    """An export folder this library does not understand or cannot trust: a newer manifest major
    version, a missing file, a sha256 mismatch, an unknown preprocessing or runtime option."""


class NoArtifact(AppError, LookupError):
    """No artifact of the export fits the runtime / precision asked for."""


class MissingRuntime(AppError, RuntimeError):
    """The runtime an artifact needs is not installed; the message names the pip extra."""


class BadInput(AppError, ValueError):
    """An image, label list, query or folder given by the user cannot be used."""
