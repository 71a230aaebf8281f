"""Progress lines on stderr for long steps (stdout stays for results)."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator, TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled

    def info(self, message: str) -> None:
        if self.enabled:
            print(message, file=self.stream, flush=True)

    @contextlib.contextmanager
    def step(self, message: str) -> Iterator[list[str]]:
        """Print `message ...`, run the block, then `done in Ns` plus any details it appended."""
        details: list[str] = []
        start = time.perf_counter()
        self.info(f"{message} ...")
        yield details
        suffix = f" ({'; '.join(details)})" if details else ""
        self.info(f"  done in {time.perf_counter() - start:.1f} s{suffix}")
