"""Progress and log lines of the stages, through the standard :mod:`logging` module.

Everything here goes to stderr (the ``protomask`` logger), never into an artifact.
On a terminal, long work shows a tqdm bar; otherwise (a log file, a pipe, DVC's
captured output) the same work gives a plain line per ``every`` share of it, so a log
stays readable. The level is INFO, or what ``PROTOMASK_LOG`` names (a level name such
as DEBUG or WARNING), or what ``-q``/``-v`` of the ``protomask`` command say; without
:func:`configure_logging` (library use, tests) the logger follows the root (WARNING):
no bars, no lines.

A sharded stage's tasks run on dask workers: :class:`ShardReporter` sends a task's
running counts from the worker as it goes, :class:`ShardTracker` turns them, and the
finished tasks' results, into one bar that advances per image.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any, TypeVar

from tqdm import tqdm

from pipeline.errors import ParamsError

LOGGER = "protomask"
ENV_VAR = "PROTOMASK_LOG"
TOPIC = "protomask-progress"  # the dask event topic of the shard tasks' counts

T = TypeVar("T")


def get_logger(name: str) -> logging.Logger:
    """The logger ``protomask.<name>`` (its lines are prefixed by the caller)."""
    return logging.getLogger(f"{LOGGER}.{name}")


def log_level(verbosity: int = 0, environ: Mapping[str, str] | None = None) -> int:
    """The level: DEBUG for ``verbosity`` > 0 (-v), WARNING for < 0 (-q), else the
    level ``PROTOMASK_LOG`` names, else INFO. An unknown name is a ParamsError."""
    if verbosity > 0:
        return logging.DEBUG
    if verbosity < 0:
        return logging.WARNING
    name = (os.environ if environ is None else environ).get(ENV_VAR, "").strip().upper()
    if not name:
        return logging.INFO
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        raise ParamsError(
            f"{ENV_VAR}={name!r} is not a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL)"
        )
    return level


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: stderr) is a terminal, where bars may redraw."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


class _Handler(logging.Handler):
    """Writes to ``stream``, or to the current stderr (as it is when a line is
    written, so a replaced stderr is followed); through tqdm on a terminal, so that a
    line does not break a bar."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self._stream = stream

    @property
    def stream(self) -> IO[str]:
        return sys.stderr if self._stream is None else self._stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line, stream = self.format(record), self.stream
            if is_terminal(stream):
                tqdm.write(line, file=stream)
            else:
                stream.write(line + "\n")
                stream.flush()
        except Exception:  # noqa: BLE001 - as logging does: report, never raise
            self.handleError(record)


def configure_logging(verbosity: int = 0, stream: IO[str] | None = None) -> int:
    """Send the ``protomask`` logger's lines to ``stream`` (default: stderr) at
    :func:`log_level`; a second call replaces the first's handler. Returns the level."""
    level = log_level(verbosity)
    logger = logging.getLogger(LOGGER)
    for old in [h for h in logger.handlers if isinstance(h, _Handler)]:
        logger.removeHandler(old)
    handler = _Handler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    return level


def format_duration(seconds: float) -> str:
    """65 -> '1:05', 3725 -> '1:02:05' (as tqdm shows times)."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_values(values: Mapping[str, Any]) -> str:
    """'a=1, b=2.50' from a mapping (floats to 3 significant digits)."""
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )


class Progress:
    """Counts units of work: a tqdm bar on a terminal, else a log line per ``every``
    share of ``total`` (None: no lines, e.g. batches inside an epoch that has its own
    line), nothing when the logger is not at INFO or ``enabled`` is False."""

    def __init__(
        self,
        desc: str,
        total: int,
        unit: str = "img",
        *,
        logger: logging.Logger,
        every: float | None = 0.1,
        enabled: bool = True,
        leave: bool = True,
    ) -> None:
        self.desc, self.total, self.unit, self.logger, self.every = desc, total, unit, logger, every
        self.n, self.postfix, self.started, self._next_line = 0, {}, time.perf_counter(), every
        on = enabled and total > 0 and logger.isEnabledFor(logging.INFO)
        self.bar = None
        if on and is_terminal():
            self.bar = tqdm(
                total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=leave, file=sys.stderr
            )
        self.lines = on and self.bar is None and every is not None

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines and self._next_line is not None and self.n >= self._next_line * self.total:
            self._log_line()

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the count (running means, failures so far)."""
        self.postfix = values
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=True)

    def _log_line(self) -> None:
        elapsed = time.perf_counter() - self.started
        rate = self.n / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {format_duration((self.total - self.n) / rate)}" if rate else ""
        extra = f"; {format_values(self.postfix)}" if self.postfix else ""
        self.logger.info(
            f"{self.desc}: {100 * self.n / self.total:.0f} % ({self.n}/{self.total} "
            f"{self.unit}, {rate:.2f} {self.unit}/s{eta}){extra}"
        )
        done = self.n / self.total
        self._next_line = None if done >= 1 else (int(done / self.every + 1e-9) + 1) * self.every

    def close(self) -> None:
        """End the bar (or log the last line when the count fell short of a line)."""
        if self.bar is not None:
            self.bar.close()
        elif self.lines and self._next_line is not None and self.n:
            self._log_line()
            self._next_line = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is not None:  # failed: no closing line, the error says what happened
            self.lines = False
        self.close()


def track(items: Iterable[T], bar: Progress) -> Iterator[T]:
    """Yield ``items``, counting each on ``bar`` (closed when they end)."""
    with bar:
        for item in items:
            yield item
            bar.update()


class Steps:
    """The numbered steps of a stage run, each logged in one line as it ends, with the
    seconds since the previous one (e.g. 'evaluate protomask seed 0: 2/5 saliency: ...')."""

    def __init__(self, prefix: str, steps: int, logger: logging.Logger) -> None:
        self.prefix, self.steps, self.logger, self.index = prefix, steps, logger, 0
        self.started = time.perf_counter()

    def done(self, name: str, detail: str = "") -> None:
        """Step ``name`` ended; ``detail`` says what it did."""
        now = time.perf_counter()
        seconds, self.started = now - self.started, now
        self.index += 1
        what = f"{name}: {detail}" if detail else name
        self.logger.info(
            f"{self.prefix}: {self.index}/{self.steps} {what} ({format_duration(seconds)})"
        )


class StepClock:
    """Seconds per step of a run and the ETA of its remaining steps (mean pace so far)."""

    def __init__(self, steps: int) -> None:
        self.steps, self.done, self.spent = steps, 0, 0.0
        self.started = time.perf_counter()

    def tick(self) -> tuple[float, float]:
        """One more step finished: (its seconds, seconds left for the others)."""
        now = time.perf_counter()
        seconds, self.started = now - self.started, now
        self.done += 1
        self.spent += seconds
        return seconds, self.spent / self.done * max(self.steps - self.done, 0)


class ShardReporter:
    """A shard task's running counts, sent from its dask worker to the client at most
    every ``interval`` seconds (outside a worker: nothing is sent)."""

    def __init__(self, key: str, interval: float = 0.25) -> None:
        self.key, self.interval, self.sent = key, interval, 0.0
        try:
            from distributed import get_worker

            self.worker: Any = get_worker()
        except (ImportError, ValueError):
            self.worker = None

    def send(self, counts: dict[str, int] | Callable[[], dict[str, int]]) -> None:
        """Send the task's counts so far (a callable is called only when a send is due);
        ``images`` advances the bar."""
        now = time.monotonic()
        if self.worker is None or now - self.sent < self.interval:
            return
        self.sent = now
        values = counts() if callable(counts) else counts
        self.worker.log_event(TOPIC, {"key": self.key, "counts": values})


class ShardTracker:
    """One bar over the images of a sharded run: running counts from the workers
    (:class:`ShardReporter`), replaced by each task's final counts when it finishes."""

    def __init__(
        self, bar: Progress, keys: set[str], postfix: Callable[[dict[str, int]], dict[str, Any]]
    ) -> None:
        self.bar, self.keys, self.postfix = bar, keys, postfix
        self.counts: dict[str, dict[str, int]] = {}  # the running tasks' latest counts
        self.totals: dict[str, int] = {}  # summed over the finished and running tasks
        self.finished: set[str] = set()
        self.lock = threading.Lock()

    def event(self, event: tuple[float, Any]) -> None:
        """A dask event handler: a running task's counts (late or foreign ones ignored)."""
        msg = event[1]
        if isinstance(msg, dict) and msg.get("key") in self.keys:
            self._set(msg["key"], dict(msg["counts"]), final=False)

    def finish(self, key: str, counts: dict[str, int]) -> None:
        """A task's result: its final counts."""
        self._set(key, counts, final=True)

    def _set(self, key: str, counts: dict[str, int], *, final: bool) -> None:
        with self.lock:
            if key in self.finished:
                return
            previous = self.counts.pop(key, {})
            if final:  # a finished task lives on in the totals only (O(1) per event)
                self.finished.add(key)
            else:
                self.counts[key] = counts
            for name in previous.keys() | counts.keys():
                change = counts.get(name, 0) - previous.get(name, 0)
                self.totals[name] = self.totals.get(name, 0) + change
            self.bar.set_postfix(**self.postfix(self.totals))
            self.bar.update(counts.get("images", 0) - previous.get("images", 0))

    @contextmanager
    def subscribed(self, client: Any) -> Iterator[ShardTracker]:
        """Receive the workers' counts while the block runs."""
        client.subscribe_topic(TOPIC, self.event)
        try:
            yield self
        finally:
            client.unsubscribe_topic(TOPIC)
