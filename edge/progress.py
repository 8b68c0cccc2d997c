"""Progress for the steps that take more than a few seconds (loading an evaluation set, the
reference pass, calibration, conversion, parity, QAT): tqdm's bar with its elapsed time on a
terminal; on anything else (a CI log, a pipe), a plain line at the start and at the end with
the elapsed time, one with the count every PLAIN_EVERY seconds between, and no carriage returns. Shown only when edge's log shows INFO (not with -q).
"""
from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("edge")
MIN_ITEMS = 8  # fewer than this is over too soon to need a bar
PLAIN_EVERY = 30.0  # seconds between the plain lines of a long loop


def _shown() -> bool:
    return log.isEnabledFor(logging.INFO) and any(getattr(h, "stream", None) is sys.stderr
                                                  for h in logging.getLogger().handlers)


def bar(items: Iterable[T], desc: str | None, total: int | None = None, unit: str = "sample") -> Iterator[T]:
    """Iterate `items` with progress named `desc` (None: silently)."""
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    total = total if total is not None else len(items)  # type: ignore[arg-type]
    if desc is None or total < MIN_ITEMS or not _shown():
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(items, total=total, desc=f"edge: {desc}", unit=unit, leave=False, file=sys.stderr,
                  dynamic_ncols=True) as t:
            yield from t
        return
    start = last = time.perf_counter()
    sys.stderr.write(f"edge: {desc}: {total} {_plural(unit)}\n")
    for i, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if now - last >= PLAIN_EVERY and i < total:  # a long loop says how far it is
            sys.stderr.write(f"edge: {desc}: {i}/{total} ({now - start:.0f} s)\n")
            last = now
    sys.stderr.write(f"edge: {desc}: done in {time.perf_counter() - start:.1f} s\n")


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")


@contextmanager
def step(desc: str):
    """A step without a count (a conversion, a child process): its elapsed time when it ends."""
    start = time.perf_counter()
    if _shown() and sys.stderr.isatty():
        sys.stderr.write(f"edge: {desc} ...\r")
        sys.stderr.flush()
    yield
    if _shown():
        log.info("%s: %.1f s", desc, time.perf_counter() - start)


class Counter:
    """Progress of a loop that reports a figure as it goes (QAT: the loss)."""

    def __init__(self, total: int, desc: str, unit: str = "step"):
        self.total, self.desc, self.start = total, desc, time.perf_counter()
        self.on = _shown()
        self.tty = sys.stderr.isatty()
        self._bar = None
        if self.on and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=f"edge: {desc}", unit=unit, leave=False, file=sys.stderr,
                             dynamic_ncols=True)
        elif self.on:
            sys.stderr.write(f"edge: {desc}: {total} {_plural(unit)}\n")
        self._next_line = max(1, total // 10)

    def update(self, done: int, **figures: float) -> None:
        if not self.on:
            return
        text = " ".join(f"{k} {v:.4g}" for k, v in figures.items())
        if self._bar is not None:
            self._bar.n = done
            self._bar.set_postfix_str(text, refresh=True)
        elif done >= self._next_line or done == self.total:  # a line every tenth, no carriage returns
            sys.stderr.write(f"edge: {self.desc}: {done}/{self.total} {text} ({time.perf_counter() - self.start:.0f} s)\n")
            self._next_line = done + max(1, self.total // 10)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self.on = False
