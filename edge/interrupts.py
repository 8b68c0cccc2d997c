"""Ctrl-C is an interrupt, even when a library swallows it or turns it into another error.

An import inside torch cut short by KeyboardInterrupt can leave a half-initialised module behind,
and the interrupt either vanishes (the build goes on and publishes) or comes back later as an
AttributeError that reads like a quantization failure. While `watching()`, SIGINT raises
KeyboardInterrupt as usual and is remembered: `check()` between the steps of a build raises it
again if it went missing, and the command line reports an error that follows it as an interrupt.
Only the command line watches (the main thread, and only when SIGINT has Python's default handler);
the Python API leaves signal handling to its caller."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_seen = False  # Ctrl-C came during the last (or current) watch
_active = False  # a command is being watched (the Python API is not)


def _handle(signum, frame) -> None:
    global _seen
    _seen = True
    raise KeyboardInterrupt


@contextmanager
def watching() -> Iterator[None]:
    """While inside: SIGINT raises KeyboardInterrupt, and is remembered."""
    global _seen, _active
    _seen, _active = False, True
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is \
            signal.default_int_handler:
        previous = signal.signal(signal.SIGINT, _handle)
    try:
        yield
    finally:
        _active = False
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def seen() -> bool:
    """Did Ctrl-C come while watching?"""
    return _seen


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came during this watch (and something swallowed it)."""
    if _active and _seen:
        raise KeyboardInterrupt
