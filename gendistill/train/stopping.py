"""Stop a run between steps: the first Ctrl-C asks, the second one interrupts at once.

A KeyboardInterrupt raised in the middle of a step would leave some phases updated and others not, and no
checkpoint written then could be resumed exactly. So while a run is in the main thread, the first SIGINT
only sets a flag; the trainer finishes the step, writes a checkpoint and its outputs, and then raises
KeyboardInterrupt itself. Outside the main thread (the demo's workers) signals cannot be handled, and
``StopRequest.set()`` does the same job.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class StopRequest:
    """A flag the trainer checks after every step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


@contextmanager
def deferred_interrupt(request: StopRequest):
    """Turn the first Ctrl-C into ``request.set()`` for the duration of the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if request.is_set():
            raise KeyboardInterrupt
        request.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
