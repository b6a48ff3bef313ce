"""A background loop on its own thread, started and stopped with its service (a `Worker` of app.py)."""

from __future__ import annotations

import contextvars
import threading
from abc import ABC, abstractmethod

__all__ = ["ThreadWorker"]


class ThreadWorker(ABC):
    """Runs `_run` on a daemon thread; `stop()` sets `_stopping` and waits for the loop to notice it."""

    thread_name = "worker"

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            # In the starter's context: the service it starts this for (spans.current_service) goes along.
            self._thread = threading.Thread(
                target=contextvars.copy_context().run, args=(self._run,), name=self.thread_name, daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    @abstractmethod
    def _run(self) -> None:
        """The loop; it must return soon after `self._stopping` is set."""
