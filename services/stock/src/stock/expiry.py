"""The expiry sweeper: a worker that gives back the units of reservations whose TTL ran out, in small batches."""

from __future__ import annotations

import logging

from stock import use_cases
from stock.domain import StockPolicy
from storeplane_runtime.clock import utcnow
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.workers import ThreadWorker

log = logging.getLogger(__name__)


class ExpirySweeper(ThreadWorker):
    """Every `interval` seconds, expires due reservations `batch` at a time until none is left.

    Safe beside Release, BasketVoided, sales and other sweepers (replicas): a reservation leaves ACTIVE once,
    and only the transaction that moved it gives its units back.
    """

    thread_name = "stock-expiry"

    def __init__(self, database: Database, policy: StockPolicy, *, interval: float, batch: int, source: str) -> None:
        self.database = database
        self.policy = policy
        self.interval = interval
        self.batch = batch
        self.source = source
        super().__init__()

    def sweep(self) -> int:
        """Expire everything due now; returns how many reservations expired."""
        total = 0
        while not self._stopping.is_set():
            with UnitOfWork(self.database, source=self.source) as uow:
                count = use_cases.expire_due(uow, self.policy, now=utcnow(), limit=self.batch)
                uow.commit()
            total += count
            if count < self.batch:
                break
        return total

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                expired = self.sweep()
                if expired:
                    log.info("reservations expired", extra={"count": expired})
            except Exception:
                log.warning("expiry sweep failed; trying again next time", exc_info=True)
