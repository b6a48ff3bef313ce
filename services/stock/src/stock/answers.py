"""GetItem's answers kept in memory, so that a till scanning an item costs no database round trip; an answer is
dropped the moment its item or level may have changed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from pos.stock.v1 import stock_pb2
from stock.events import ITEM_UPDATED, STOCK_LEVEL_CHANGED
from storeplane_runtime.broadcast import Broadcast
from storeplane_runtime.outbox import PendingEvent

# How an answer is dropped when its item or level may have changed:
# - this process's own commits drop the answers of the SKUs they changed before the call that committed returns
#   (`committed`, a database listener): a caller reads its own writes;
# - other replicas' commits arrive in commit order through the committed-events feed (`broadcast`, PostgreSQL);
# - a feed that lost its connection may have missed changes: everything is dropped (`clear`), and nothing is kept
#   or served while the feed is not live;
# - an answer older than `ttl_seconds` is not served (a bound on staleness should a notification ever go missing
#   without the feed noticing).
# Answers are only dropped, never patched from an event, so the order in which invalidations and database reads
# interleave cannot leave an old answer behind: a reader takes a `ticket` before reading the database, and keeps
# what it read only if no change to that SKU (and no `clear`) was seen since the ticket.

# The events after which an answer may be wrong; their subject is the SKU.
CHANGES = frozenset({STOCK_LEVEL_CHANGED, ITEM_UPDATED})

# SKUs whose last change is remembered for racing readers; past this, the memory is dropped and readers holding
# an older ticket do not keep what they read (a cache miss, never a stale answer).
TOUCHED_MEMORY = 10_000

Key = tuple[str, str, str]  # store_id, "sku" or "barcode", the SKU or barcode asked for


class _Answer(NamedTuple):
    response: stock_pb2.GetItemResponse
    sku: str
    expires: float


class GetItemAnswers:
    """Answers by (store, key kind, key); safe across threads (writers hold the lock, readers see a whole entry or
    none). `capacity` 0 turns the cache off."""

    def __init__(
        self,
        capacity: int = 100_000,
        ttl_seconds: float = 10.0,
        *,
        live: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.ttl_seconds = ttl_seconds
        self.live = live  # the feed of other replicas' changes is listening (always true on SQLite)
        self.clock = clock
        self._answers: dict[Key, _Answer] = {}
        self._keys_of: dict[str, set[Key]] = {}  # SKU -> the keys whose answer shows it
        self._touched: dict[str, int] = {}  # SKU -> sequence number of its last change
        self._sequence = 0
        self._horizon = 0  # tickets older than this cannot be checked against `_touched`
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: Key) -> stock_pb2.GetItemResponse | None:
        answer = self._answers.get(key)
        if answer is None or answer.expires < self.clock() or not self.live():
            return None
        return answer.response

    def ticket(self) -> int | None:
        """Take before reading the database; None when what is read must not be kept (cache off, feed down)."""
        if not self.enabled or not self.live():
            return None
        return self._sequence

    def put(self, ticket: int | None, key: Key, sku: str, response: stock_pb2.GetItemResponse) -> None:
        """Keep `response` (read after `ticket` was taken) unless its SKU changed since, or the cache was cleared."""
        if ticket is None:
            return
        with self._lock:
            if ticket < self._horizon or self._touched.get(sku, -1) > ticket or not self.live():
                return
            if key not in self._answers and len(self._answers) >= self.capacity:
                self._evict_oldest()
            self._answers[key] = _Answer(response, sku, self.clock() + self.ttl_seconds)
            self._keys_of.setdefault(sku, set()).add(key)

    def changed(self, skus: Iterable[str]) -> None:
        """The items or levels of these SKUs changed (in some store): drop their answers."""
        with self._lock:
            for sku in skus:
                self._sequence += 1
                self._touched[sku] = self._sequence
                for key in self._keys_of.pop(sku, ()):
                    self._answers.pop(key, None)
            if len(self._touched) > TOUCHED_MEMORY:
                self._touched.clear()
                self._horizon = self._sequence

    def clear(self) -> None:
        """Drop everything (the feed may have missed changes); readers that hold a ticket keep nothing."""
        with self._lock:
            self._sequence += 1
            self._horizon = self._sequence
            self._answers.clear()
            self._keys_of.clear()
            self._touched.clear()

    def _evict_oldest(self) -> None:
        key = next(iter(self._answers))
        sku = self._answers.pop(key).sku
        keys = self._keys_of.get(sku)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._keys_of[sku]

    # --- sources of changes ---------------------------------------------------------------------------------

    def committed(self, written: Sequence[PendingEvent]) -> None:
        """Database listener: this process's commit wrote these events (called on the committing thread)."""
        skus = [p.subject for p in written if p.event_type in CHANGES]
        if skus:
            self.changed(skus)

    def broadcast(self, told: Broadcast) -> None:
        """Feed handler: a commit of any replica, in commit order."""
        if told.event_type not in CHANGES:
            return
        if told.subject:
            self.changed((told.subject,))
        else:  # told by a replica that does not name subjects yet: which SKU is in the event
            self.clear()
