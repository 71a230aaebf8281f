"""edgevl: on-device deployment compiler for vision-language models.

Heavy modules (torch, SDKs) are imported lazily so `edgevl --help` stays fast.
"""

__version__ = "0.1.0"
