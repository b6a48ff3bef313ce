"""Live stock: committed level changes fanned out to WatchStock subscribers, each with a bounded queue (one that falls
behind is cut off, rather than slowing the writers)."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Collection, Iterator, Sequence

from pos.stock.v1 import events_pb2, stock_pb2
from stock.domain import WatcherFellBehind
from stock.events import STOCK_LEVEL_CHANGED
from storeplane_runtime.broadcast import Broadcast
from storeplane_runtime.errors import Unavailable
from storeplane_runtime.outbox import PendingEvent

# Fed with the StockLevelChanged events each commit wrote to its outbox, so a watcher sees exactly what was committed,
# in commit order, without any query per client. Where they come from depends on the database:
# - SQLite (one process): the database's committed-events listener, on the committing thread (`committed`);
# - PostgreSQL (any number of replicas): every replica's commits, through the database's notifications
#   (`storeplane_runtime.broadcast`, `changed`), listened to only while this replica has watchers. While that feed
#   is down the hub is unavailable: watchers are cut off (they must re-read levels and watch again) and new ones are
#   refused, since changes could be missed.

_CLOSED = object()


class Subscription:
    """One watcher: the changes of one store (optionally only some SKUs), read with `changes` or `next_change`."""

    def __init__(self, hub: StockWatch, store_id: str, skus: Collection[str], capacity: int) -> None:
        self.hub = hub
        self.store_id = store_id
        self.skus = frozenset(skus)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=capacity)
        self.overflowed = False
        self.missed = False  # cut off because the hub's feed lost changes
        self.closed = False

    def offer(self, change: stock_pb2.StockLevelChange) -> None:
        if self.closed or (self.skus and change.sku not in self.skus):
            return
        try:
            self._queue.put_nowait(change)
        except queue.Full:
            self.overflowed = True
            self.close()

    def next_change(self, timeout: float) -> stock_pb2.StockLevelChange | None:
        """The next change, or None if there was none within `timeout` or the subscription ended."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _CLOSED:
            self.closed = True
            return None
        assert isinstance(item, stock_pb2.StockLevelChange)
        return item

    def changes(self, is_active: Callable[[], bool], poll_seconds: float) -> Iterator[stock_pb2.StockLevelChange]:
        """The changes as they come, while the caller `is_active` and the subscription open; ends with
        WatcherFellBehind if it fell behind, Unavailable if the feed lost changes (re-read levels, watch again)."""
        while is_active() and not self.closed:
            change = self.next_change(poll_seconds)
            if change is not None:
                yield change
        if self.overflowed:
            raise WatcherFellBehind("the watcher read too slowly and missed changes; re-read levels, watch again")
        if self.missed:
            raise Unavailable("live stock changes were interrupted on this server; re-read levels, watch again")

    def close(self) -> None:
        """Stop receiving (client went away, fell behind, or the server stops); wakes a waiting reader."""
        if not self.closed:
            self.closed = True
            self.hub.unsubscribe(self)
            # When the queue is full the reader still sees `closed` within one poll interval.
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_CLOSED)


def _constant(payload: bytes) -> Callable[[], bytes]:
    return lambda: payload


class StockWatch:
    """The fan-out: subscribers per store, fed with committed StockLevelChanged events."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._by_store: dict[str, set[Subscription]] = {}
        self._lock = threading.Lock()
        # Makes sure every committed change reaches this hub from now on; False when it cannot (the replica's feed
        # is down). Called after a new subscriber counts, so a feed that listens only while watched sees it.
        self.ensure_live: Callable[[], bool] = lambda: True

    def subscribe(self, store_id: str, skus: Collection[str] = ()) -> Subscription:
        subscription = Subscription(self, store_id, skus, self.capacity)
        with self._lock:
            self._by_store.setdefault(store_id, set()).add(subscription)
        if not self.ensure_live():
            subscription.close()
            raise Unavailable("live stock changes are not available on this server right now; retry shortly")
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            subscribers = self._by_store.get(subscription.store_id)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._by_store[subscription.store_id]

    def subscriber_count(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._by_store.values())

    def committed(self, written: Sequence[PendingEvent]) -> None:
        """Database listener (SQLite): called after each commit with the events it wrote (on the committing thread)."""
        if not self._by_store:
            return
        for pending in written:
            if pending.event_type == STOCK_LEVEL_CHANGED:
                self._offer(pending.store_id, _constant(pending.payload))

    def changed(self, broadcast: Broadcast) -> None:
        """Feed handler (PostgreSQL): one committed StockLevelChanged of any replica, in commit order."""
        if broadcast.event_type == STOCK_LEVEL_CHANGED and self._by_store:
            if not broadcast.complete:  # too large to be told (cannot happen for a level change): a gap
                self.cut_off()
                return
            self._offer(broadcast.store_id, lambda: broadcast.payload)

    def _offer(self, store_id: str, payload: Callable[[], bytes]) -> None:
        with self._lock:
            subscribers = list(self._by_store.get(store_id, ()))
        if not subscribers:
            return
        change = events_pb2.StockLevelChanged.FromString(payload()).change
        for subscription in subscribers:
            subscription.offer(change)

    def cut_off(self) -> None:
        """End every stream (they may have missed changes): their clients re-read levels and watch again."""
        with self._lock:
            subscribers = [s for group in self._by_store.values() for s in group]
        for subscription in subscribers:
            subscription.missed = True
            subscription.close()

    def stop(self) -> None:
        """End every stream cleanly (server shutdown)."""
        with self._lock:
            subscribers = [s for group in self._by_store.values() for s in group]
        for subscription in subscribers:
            subscription.close()
