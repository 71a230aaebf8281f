"""edgevl's version (the same as pyproject.toml's), in a module of its own so that every layer may
read it without importing the package's public API (edgevl/__init__.py calls the pipeline)."""

__version__ = "0.1.0"
