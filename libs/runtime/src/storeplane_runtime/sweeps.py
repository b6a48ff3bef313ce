"""Sweepers: workers that, every few seconds, apply one use case to whatever fell due, a batch per transaction.

Reservations and holds whose TTL ran out, points lots past their date, idle baskets: each service names the step
(`step(uow, now, limit) -> how many it handled`) and the kit runs it until a batch comes back short, then waits.
The step must be safe beside the same step in another replica (move each row out of its due state once, under
the row's lock or a guarded UPDATE), so that two replicas never handle one row twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from storeplane_runtime.clock import utcnow
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.workers import ThreadWorker

__all__ = ["SweepStep", "Sweeper"]

log = logging.getLogger(__name__)

SweepStep = Callable[[UnitOfWork, datetime, int], int]


class Sweeper(ThreadWorker):
    """Runs `step` every `interval` seconds, `batch` rows per unit of work, until a batch comes back short."""

    def __init__(
        self,
        name: str,
        database: Database,
        step: SweepStep,
        *,
        interval: float,
        batch: int,
        source: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.thread_name = name
        self.database = database
        self.step = step
        self.interval = interval
        self.batch = batch
        self.source = source
        self.clock = clock
        super().__init__()

    def sweep(self) -> int:
        """Handle everything due now; returns how many rows the step handled."""
        total = 0
        now = self.clock()
        while not self._stopping.is_set():
            with UnitOfWork(self.database, source=self.source) as uow:
                count = self.step(uow, now, self.batch)
                uow.commit()
            total += count
            if count < self.batch:
                break
        return total

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                handled = self.sweep()
                if handled:
                    log.info("swept", extra={"sweeper": self.thread_name, "count": handled})
            except Exception:
                log.warning("%s failed; trying again next time", self.thread_name, exc_info=True)
