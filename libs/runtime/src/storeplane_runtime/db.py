"""Database access: one engine per service, sessions, and the unit of work that writes events to the outbox
in the same transaction as the state change. Works on SQLite (embedded) and PostgreSQL (distributed)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from google.protobuf.message import Message
from opentelemetry import trace
from sqlalchemy import Connection, Engine, RootTransaction, create_engine, event, exc
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.orm import Session, sessionmaker

from storeplane_runtime import outbox
from storeplane_runtime.telemetry import statement_span

__all__ = ["Database", "RequestIdTaken", "UnitOfWork", "trace_statements"]

log = logging.getLogger(__name__)

# A connection used moments ago is alive; pinging it on every checkout cost a round trip per transaction.
PING_AFTER_IDLE_SECONDS = 5.0


class Database:
    """An engine and a session factory, plus hooks run after every commit that wrote events."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        max_overflow: int = 20,
        echo: bool = False,
        ping_after_idle: float = PING_AFTER_IDLE_SECONDS,
    ) -> None:
        parsed = make_url(url)
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        # A failed statement's error never shows its parameters: they are customers' names, emails, card numbers.
        kwargs: dict[str, Any] = {"echo": echo, "future": True, "hide_parameters": True}
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_recycle=1800)
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            _serialise_sqlite_writers(self.engine)
        else:
            _ping_idle_connections(self.engine, ping_after_idle)
        # Reads that need no transaction (one statement, or several that need not agree) run in autocommit on
        # PostgreSQL: no BEGIN and ROLLBACK round trips around them.
        self.read_engine: Engine = (
            self.engine if self.is_sqlite else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._committed_hooks: list[Callable[[], None]] = []
        self._event_listeners: list[Callable[[Sequence[outbox.PendingEvent]], None]] = []
        self._hooks_lock = threading.Lock()
        # Event types whose commits every process on this PostgreSQL database is told of (see broadcast.py).
        self.broadcast_types: frozenset[str] = frozenset()

    def on_events_committed(self, hook: Callable[[], None]) -> None:
        """Call `hook` after each commit that wrote outbox rows (the relay uses it to wake at once)."""
        with self._hooks_lock:
            self._committed_hooks.append(hook)

    def broadcast(self, *event_types: str) -> None:
        """On PostgreSQL, notify the committed events of these types to every listening process (replicas)."""
        self.broadcast_types = self.broadcast_types | frozenset(event_types)

    def on_committed_events(self, listener: Callable[[Sequence[outbox.PendingEvent]], None]) -> None:
        """Call `listener` with the events of each commit that wrote some, after the commit (in-process fan-out,
        e.g. live streams fed from committed changes). Runs on the committing thread: keep it quick."""
        with self._hooks_lock:
            self._event_listeners.append(listener)

    def events_committed(self, events: Sequence[outbox.PendingEvent] = ()) -> None:
        for hook in list(self._committed_hooks):
            try:
                hook()
            except Exception:
                log.exception("after-commit hook failed")
        if events:
            for listener in list(self._event_listeners):
                try:
                    listener(events)
                except Exception:
                    log.exception("committed-events listener failed")

    def dispose(self) -> None:
        self.engine.dispose()


def _ping_idle_connections(engine: Engine, idle_seconds: float) -> None:
    """Pessimistic disconnect handling for connections that sat idle in the pool: they are pinged on checkout and
    replaced when dead. A connection that breaks while in use fails that one call, and SQLAlchemy's disconnect
    detection then recycles the whole pool."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle_seconds:
            return  # new, or used a moment ago
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
            dbapi_connection.rollback()  # hand it over outside a transaction, as the pool does
        except Exception as error:
            raise exc.DisconnectionError(f"idle connection is dead: {error}") from error


def _serialise_sqlite_writers(engine: Engine) -> None:
    # pysqlite's deferred BEGIN lets two writers deadlock on lock upgrade; take the write lock up front,
    # use WAL so readers of other connections are not blocked, and wait for the lock rather than fail.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


_statements_traced = False
_SPAN_KEY = "storeplane_statement_span"


def trace_statements() -> None:
    """Make a span of every statement SQLAlchemy runs, on every engine (made already or later). Called once by
    `telemetry.configure_tracing` when spans are exported; not installed otherwise, so it costs nothing then."""
    global _statements_traced
    if _statements_traced:
        return
    _statements_traced = True
    for name, listener in _STATEMENT_LISTENERS:
        event.listen(Engine, name, listener)


def untrace_statements() -> None:
    """Undo `trace_statements` (tests)."""
    global _statements_traced
    if not _statements_traced:
        return
    _statements_traced = False
    for name, listener in _STATEMENT_LISTENERS:
        event.remove(Engine, name, listener)


def _before_statement(conn: Connection, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool) -> None:
    span = statement_span(statement, conn.dialect.name, conn.engine.url.database)
    if span is not None:
        conn.info[_SPAN_KEY] = span


def _after_statement(conn: Connection, *_args: Any) -> None:
    span = conn.info.pop(_SPAN_KEY, None)
    if span is not None:
        span.end()


def _statement_failed(context: ExceptionContext) -> None:
    conn = context.connection
    span = conn.info.pop(_SPAN_KEY, None) if conn is not None else None
    if span is not None:
        span.set_status(trace.StatusCode.ERROR, type(context.original_exception).__name__)
        span.end()


_STATEMENT_LISTENERS: tuple[tuple[str, Callable[..., None]], ...] = (
    ("before_cursor_execute", _before_statement),
    ("after_cursor_execute", _after_statement),
    ("handle_error", _statement_failed),
)


class RequestIdTaken(Exception):
    """The request id a unit of work was to remember was taken by a call that committed first (nothing committed)."""


class UnitOfWork:
    """One transaction: state changes and the events they cause commit together or not at all.

    Use as a context manager; nothing is committed unless `commit()` is called. The transaction is a Core
    connection's (`connection`); an ORM `session` is made on it only for code that asks for one, and is flushed at
    commit: hot paths pay for no Session.
    """

    def __init__(self, database: Database, *, source: str) -> None:
        self.database = database
        self.source = source
        self._connection: Connection | None = None
        self._transaction: RootTransaction | None = None
        self._session: Session | None = None
        self._pending: list[outbox.PendingEvent] = []
        self._keys: list[Mapping[str, Any]] = []
        self._trace_headers: dict[str, str] | None = None
        self._committed = False

    def __enter__(self) -> Self:
        self._connection = self._transaction = self._session = None
        self._pending = []
        self._keys = []
        self._trace_headers = None
        self._committed = False
        return self

    @property
    def connection(self) -> Connection:
        """This transaction's connection: Core statements run here without the ORM's overhead."""
        if self._connection is None:
            connection = self.database.engine.connect()
            try:
                self._transaction = connection.begin()
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    @property
    def session(self) -> Session:
        """An ORM session in this transaction (it never commits or rolls back the transaction itself)."""
        if self._session is None:
            self._session = Session(bind=self.connection, expire_on_commit=False, join_transaction_mode="rollback_only")
        return self._session

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._session is not None:
                self._session.close()
            if not self._committed and self._transaction is not None and self._transaction.is_active:
                self._transaction.rollback()
        finally:
            if self._connection is not None:
                self._connection.close()
            self._connection = self._transaction = self._session = None

    @property
    def trace_headers(self) -> dict[str, str]:
        """The trace context every event of this transaction carries, captured once (message headers)."""
        if self._trace_headers is None:
            self._trace_headers = outbox.trace_headers()
        return self._trace_headers

    @trace_headers.setter
    def trace_headers(self, headers: dict[str, str]) -> None:
        """Events published from now on carry these (a unit of work doing the calls of several callers at once
        switches to each caller's context before publishing what that call causes)."""
        self._trace_headers = headers

    def publish(self, event: Message, *, subject: str = "", store_id: str = "") -> str:
        """Queue `event` for the outbox of this transaction; returns its event id."""
        pending = outbox.prepare(
            event, source=self.source, subject=subject, store_id=store_id, headers=self.trace_headers
        )
        self._pending.append(pending)
        return pending.event_id

    def publish_prepared(self, events: Iterable[outbox.PendingEvent]) -> None:
        """Queue events the caller prepared itself, in order (bulk writers that build thousands of events of one
        shape at once, with this unit of work's `source` and `trace_headers`)."""
        self._pending.extend(events)

    def remember(self, key: Mapping[str, Any]) -> None:
        """Insert this idempotency key row (the columns of `tables.idempotency_table`) at commit: on PostgreSQL in
        the statement that writes the outbox rows. `commit` raises RequestIdTaken, and commits nothing, when a call
        with the same caller and request id as a key remembered committed first."""
        self._keys.append(key)

    def commit(self) -> None:
        written, keys = self._pending, self._keys
        if self._session is not None:
            self._session.flush()
        remembered = True
        if written:
            remembered = outbox.write(self.connection, written, self.database.broadcast_types, keys=keys)
            self._pending = []
        elif keys:
            remembered = outbox.remember(self.connection, keys)
        self._keys = []
        if not remembered:
            raise RequestIdTaken(", ".join(str(key.get("request_id", "")) for key in keys))
        if self._transaction is not None:
            self._transaction.commit()
        self._committed = True
        if written:
            self.database.events_committed(written)

    def rollback(self) -> None:
        """Undo everything of this transaction; the unit of work may then be used again (a new transaction)."""
        self._pending = []
        self._keys = []
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._transaction is not None and self._transaction.is_active:
            self._transaction.rollback()
        if self._connection is not None:
            self._connection.close()
        self._connection = self._transaction = None
