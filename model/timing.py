"""Wall-clock sections of a stage run, for its run log (never for DVC-tracked outputs)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timer:
    """Seconds spent in named sections; a section entered again adds to its total."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Add the time spent inside the ``with`` block to section ``name``."""
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - begin

    def mark(self, name: str) -> None:
        """Record the seconds since the timer started as ``name``."""
        self.seconds[name] = time.perf_counter() - self.started

    def rounded(self) -> dict[str, float]:
        """Every section's seconds, rounded to 0.01 s, in the order first recorded."""
        return {name: round(value, 2) for name, value in self.seconds.items()}
