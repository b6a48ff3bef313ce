"""Committed events of chosen types, told to every process that uses the same PostgreSQL database.

`Database.on_committed_events` sees the commits of its own process only. A service that runs several replicas and
streams live changes to clients (stock's WatchStock) needs every replica's commits. On PostgreSQL the outbox insert
of a unit of work that writes such events also calls `pg_notify` for them, in the same statement and the same
transaction (see `outbox.write`): PostgreSQL delivers the notifications at commit, in commit order, to every
listening session, and never for a transaction that rolled back. One notification carries as many events as fit
(`encode`): a bulk import tells its thousands of level changes in a few dozen notifications.
`CommittedEventsFeed` is that listening session: a worker thread with a connection of its own that hands each
event to the service.

No notification outlives a dropped listening connection, so a feed that lost its connection reports a gap
(`on_gap`) and is not `live` until it listens again: a consumer must then treat what it streamed as incomplete.
"""

from __future__ import annotations

import base64
import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Iterable

import psycopg
from sqlalchemy.engine import make_url

from storeplane_runtime.workers import ThreadWorker

__all__ = ["CHANNEL", "Broadcast", "CommittedEventsFeed", "decode", "encode"]

log = logging.getLogger(__name__)

CHANNEL = "storeplane_committed_events"
# pg_notify refuses payloads of 8000 bytes or more. An event whose bytes exceed MAX_PAYLOAD_BYTES is told without
# them (`complete` is False): its type, store and subject still reach every listener. Base64 grows bytes by a third.
MAX_PAYLOAD_BYTES = 5000
MAX_NOTIFICATION_BYTES = 7900


def _entry(event_type: str, store_id: str, payload: bytes, subject: str) -> str:
    # "type store body subject": the subject last, as the one part that may hold spaces (base64 has none); entries
    # are separated by newlines, so a subject with one is left out (a listener then knows the type and store only).
    body = base64.b64encode(payload).decode("ascii") if len(payload) < MAX_PAYLOAD_BYTES else ""
    if "\n" in subject:
        subject = ""
    return f"{event_type} {store_id} {body} {subject}"


def encode(events: Iterable[tuple[str, str, bytes, str]]) -> list[str]:
    """(event type, store, bytes, subject) of events in commit order -> notification payloads, each within
    pg_notify's limit (in bytes), together in the same order."""
    notifications: list[str] = []
    batch: list[str] = []
    size = 0
    for event_type, store_id, payload, subject in events:
        entry = _entry(event_type, store_id, payload, subject)
        length = len(entry.encode())
        if length > MAX_NOTIFICATION_BYTES:  # an outsized subject or store: told with type and store only
            entry = _entry(event_type, store_id[:200], b"", "")
            length = len(entry.encode())
        if batch and size + length > MAX_NOTIFICATION_BYTES:
            notifications.append("\n".join(batch))
            batch, size = [], 0
        batch.append(entry)
        size += length + 1
    if batch:
        notifications.append("\n".join(batch))
    return notifications


class Broadcast:
    """One notified event: its type, store and subject at once, its protobuf bytes decoded only when asked for (a
    listener with no interest in the store pays nothing for them). An event too large for a notification comes
    without its bytes (`complete` False): a listener that needs them re-reads what it keeps."""

    __slots__ = ("_body", "event_type", "store_id", "subject")

    def __init__(self, event_type: str, store_id: str, body: str, subject: str = "") -> None:
        self.event_type, self.store_id, self._body, self.subject = event_type, store_id, body, subject

    @property
    def complete(self) -> bool:
        return bool(self._body)

    @property
    def payload(self) -> bytes:
        return base64.b64decode(self._body)


def decode(notification: str) -> list[Broadcast]:
    """A notification's payload -> its `Broadcast`s, in order (ValueError when it is not one of ours)."""
    told = []
    for entry in notification.split("\n"):
        parts = entry.split(" ", 3)
        if len(parts) != 4 or not parts[0]:
            raise ValueError("not a broadcast")
        told.append(Broadcast(*parts))
    return told


class CommittedEventsFeed(ThreadWorker):
    """Listens on the database for broadcast events and calls `on_event(broadcast)` for those of `event_types`, on
    the feed's thread, in commit order. `on_gap()` is called when the connection is lost while listening.

    With `wanted` (e.g. "are there watchers?") the feed listens only while it answers true, and `linger_seconds`
    after: a replica nobody watches spends nothing on the stream of notifications. A new consumer calls
    `ensure_listening()` once it counts for `wanted`, and may rely on the feed from its return (True) on.
    Without `wanted` the feed always listens, from `start()` on.
    """

    thread_name = "committed-events-feed"

    def __init__(
        self,
        database_url: str,
        event_types: Collection[str],
        on_event: Callable[[Broadcast], None],
        *,
        on_gap: Callable[[], None] = lambda: None,
        wanted: Callable[[], bool] | None = None,
        linger_seconds: float = 5.0,
        reconnect_max_seconds: float = 5.0,
        start_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self.conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.event_types = frozenset(event_types)
        self.on_event = on_event
        self.on_gap = on_gap
        self.wanted = wanted
        self.linger_seconds = linger_seconds
        self.reconnect_max_seconds = reconnect_max_seconds
        self.start_timeout = start_timeout
        self.live = threading.Event()  # listening: every broadcast committed from now on will be seen
        self.connections_opened = 0
        self.listens = 0  # LISTENs issued (tests read it)
        self._asked = threading.Event()  # someone waits in ensure_listening
        self._connection: psycopg.Connection | None = None

    def _want(self) -> bool:
        return self.wanted is None or self._asked.is_set() or self.wanted()

    def start(self) -> None:
        """Start the feed. Without `wanted`, waits (up to `start_timeout`) for the first LISTEN, so a service that
        starts serving right after has a complete feed."""
        super().start()
        if self.wanted is None and not self.live.wait(self.start_timeout):
            log.warning("committed-events feed not listening yet; live streams refuse until it is")

    def ensure_listening(self, timeout: float = 5.0) -> bool:
        """Listen (if not yet) and wait until the feed is live; False if it could not be within `timeout`."""
        if self.live.is_set():
            return True
        self._asked.set()
        live = self.live.wait(timeout)
        if live:
            self._asked.clear()  # answered: it no longer keeps the feed wanted
        return live

    def stop(self) -> None:
        self._stopping.set()
        connection = self._connection
        if connection is not None:
            try:
                connection.cancel_safe(timeout=2)  # ends a blocking wait for notifications
            except Exception:  # closed meanwhile
                log.debug("feed connection already gone")
        super().stop()

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            if not self._want():
                self._asked.wait(0.05)
                continue
            try:
                self._listen()
                failures = 0
            except Exception as exc:
                if self._stopping.is_set():
                    break
                failures += 1
                delay = min(self.reconnect_max_seconds, 0.1 * 2 ** min(failures, 8)) * random.uniform(0.5, 1.0)
                log.warning(
                    "committed-events feed lost its connection, reconnecting",
                    extra={"error": f"{type(exc).__name__}: {exc}", "retry_in": delay},
                )
                self._stopping.wait(delay)

    def _listen(self) -> None:
        """One connection: LISTEN, deliver, until stopping or (with `wanted`) nobody wanted the feed for a while."""
        with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as connection:
            self._connection = connection
            try:
                connection.execute(f"LISTEN {CHANNEL}")
                self.connections_opened += 1
                self.listens += 1
                self.live.set()
                self._asked.clear()
                unwanted_since: float | None = None
                poll = 1.0 if self.wanted is None else 0.2
                while not self._stopping.is_set():
                    for notify in connection.notifies(timeout=poll):
                        self._deliver(notify.payload)
                        if self._stopping.is_set():
                            break
                    if self.wanted is None or self._want():
                        unwanted_since = None
                        continue
                    now = time.monotonic()
                    unwanted_since = unwanted_since or now
                    if now - unwanted_since < self.linger_seconds:
                        continue
                    # Not live first, then look again: a consumer that counted for `wanted` before this look is
                    # seen here; one that counts after it finds the feed not live and asks for it.
                    self.live.clear()
                    if self._want():
                        self.live.set()
                        unwanted_since = None
                        continue
                    return  # closing the connection ends the LISTEN
            finally:
                self._connection = None
                if self.live.is_set():
                    self.live.clear()
                    if not self._stopping.is_set():
                        self._gap()

    def _deliver(self, payload: str) -> None:
        try:
            told = decode(payload)
        except ValueError:  # not ours, or from a replica that speaks another format: what it said is lost
            log.warning("undecodable broadcast: reported as a gap", extra={"payload": payload[:100]})
            self._gap()
            return
        for broadcast in told:
            if broadcast.event_type in self.event_types:
                try:
                    self.on_event(broadcast)
                except Exception:
                    log.exception("committed-events feed handler failed")

    def _gap(self) -> None:
        try:
            self.on_gap()
        except Exception:
            log.exception("committed-events feed gap handler failed")
