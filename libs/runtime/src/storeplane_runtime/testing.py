"""Helpers for tests and benchmarks of storeplane services: free ports, waiting on conditions, a service started
on a free port against SQLite or PostgreSQL, events delivered to its consumers, and what its units of work published.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import func, select

from storeplane_runtime.app import ServiceApp
from storeplane_runtime.auth.client import with_bearer
from storeplane_runtime.auth.issuer import DevIssuer
from storeplane_runtime.clock import utcnow
from storeplane_runtime.db import Database
from storeplane_runtime.event_ids import new_event_id
from storeplane_runtime.messaging.consumers import InboxApplier
from storeplane_runtime.messaging.envelope import Envelope
from storeplane_runtime.settings import ServiceSettings
from storeplane_runtime.tables import outbox_table

__all__ = [
    "RunningService",
    "TestAuthority",
    "deliver",
    "free_port",
    "free_port_block",
    "need",
    "published",
    "service_settings",
    "start_service",
    "test_authority",
    "unsent_events",
    "wait_serving",
    "wait_until",
]

S = TypeVar("S", bound=ServiceSettings)
E = TypeVar("E", bound=Message)
T = TypeVar("T")


IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def need(server: str, reason: str) -> None:
    """A test needs `server` (PostgreSQL, RabbitMQ, Redis) and it does not answer: fail in CI (CI=true), skip
    elsewhere."""
    import pytest  # only tests call this; the kit itself does not depend on pytest

    message = f"{server} is not reachable: {reason}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_port_block(size: int) -> int:
    """The first of `size` consecutive free ports, outside the kernel's ephemeral range (where outgoing
    connections of other processes could take one between our check and our bind)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 30_000 - size)
        if all(_bindable(base + i) for i in range(size)):
            return base
    raise RuntimeError(f"no block of {size} free ports found")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "the condition") -> None:
    """Poll `condition` until it holds; AssertionError naming `what` after `timeout` seconds (a bounded wait on a
    condition, never a bare sleep: a busy machine only makes it slower, not wrong)."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def wait_serving(address: str, service: str = "", timeout: float = 120.0) -> None:
    """Poll grpc.health.v1 until `service` at `address` is SERVING; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    last = ""
    # Short reconnect backoff: otherwise a channel that met a closed port waits seconds before retrying.
    options = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.max_reconnect_backoff_ms", 200)]
    with grpc.insecure_channel(address, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            except grpc.RpcError as exc:
                last = exc.code().name
            time.sleep(0.05)
    raise AssertionError(f"{address} ({service or 'server'}) not SERVING after {timeout}s (last: {last})")


class TestAuthority:
    """The issuer of the tokens tests call with: a development key pair in a directory of the test run's own."""

    __test__ = False  # a helper, not a test class

    def __init__(self, directory: str | Path) -> None:
        self.issuer = DevIssuer(directory).ensure()

    @property
    def jwks_file(self) -> str:
        return str(self.issuer.jwks_file)

    def token(
        self,
        *,
        subject: str = "test-admin",
        scopes: Iterable[str] | None = None,
        stores: Iterable[str] = ("*",),
        ttl_seconds: float = 3600,
    ) -> str:
        """A token (default: every scope any RPC declares, all stores)."""
        return self.issuer.mint(subject=subject, scopes=scopes, stores=stores, ttl_seconds=ttl_seconds)


_authority: TestAuthority | None = None


def test_authority() -> TestAuthority:
    """The authority of this test process (made once, in a temporary directory removed at exit)."""
    global _authority
    if _authority is None:
        directory = tempfile.mkdtemp(prefix="storeplane-auth-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        _authority = TestAuthority(directory)
    return _authority


test_authority.__test__ = False  # type: ignore[attr-defined]


def service_settings(settings_cls: type[S], name: str, database_url: str, **overrides: Any) -> S:
    """Settings of a service under test: loopback, any free gRPC port, no metrics port, the given database, tokens
    of `test_authority()`."""
    values: dict[str, Any] = {
        "service_name": name,
        "grpc_host": "127.0.0.1",
        "grpc_port": 0,
        "metrics_port": 0,
        "database_url": database_url,
        "shutdown_grace_seconds": 2,
        "auth_jwks_file": test_authority().jwks_file,
    }
    values.update(overrides)
    return settings_cls(**values)


@dataclass
class RunningService:
    """A service app serving on a free port, with a channel to it; `stop()` ends both."""

    app: ServiceApp
    port: int
    channel: grpc.Channel
    _stubs: dict[Any, Any] = field(default_factory=dict)

    @property
    def database(self) -> Database:
        assert self.app.database is not None, f"{self.app.name} has no database"
        return self.app.database

    def stub_of(self, stub_class: Callable[[grpc.Channel], T]) -> T:
        """A generated client stub (`XServiceStub`) on this service's channel, one per class."""
        if stub_class not in self._stubs:
            self._stubs[stub_class] = stub_class(self.channel)
        stub: T = self._stubs[stub_class]
        return stub

    def channel_as(self, token: str) -> grpc.Channel:
        """Another channel to this service whose calls carry `token` (close it when done)."""
        return with_bearer(grpc.insecure_channel(f"127.0.0.1:{self.port}"), token)

    def stop(self) -> None:
        self.channel.close()
        self.app.stop(0)


def start_service(create_app: Callable[[S], ServiceApp], settings: S, *, token: str | None = None) -> RunningService:
    """Build the app (schema migrated as `settings` says), start it and connect: gRPC over a real socket, every call
    with `token` (default: `test_authority()`'s token for every scope and store)."""
    app = create_app(settings)
    port = app.start()
    channel = with_bearer(grpc.insecure_channel(f"127.0.0.1:{port}"), token or test_authority().token())
    return RunningService(app, port, channel)


def deliver(app: ServiceApp, event: Message, *, event_id: str = "", source: str = "test") -> str:
    """Hand `event` to the app's consumers as the bus would (inbox, one unit of work); returns the outcome's status
    (`applied`, `duplicate`, `ignored` or `failed`). The event's meta gets `event_id` (a new one if empty)."""
    assert app.database is not None, f"{app.name} has no database"
    assert app.consumers is not None, f"{app.name} consumes no events"
    event_id = event_id or new_event_id()
    meta = _meta_field(event)
    if meta is not None:
        meta.event_id = event_id  # type: ignore[attr-defined]
        meta.event_type = event.DESCRIPTOR.full_name  # type: ignore[attr-defined]
    envelope = Envelope(
        event_id=event_id,
        event_type=event.DESCRIPTOR.full_name,
        source=source,
        payload=event.SerializeToString(),
        occurred_at=utcnow(),
    )
    [outcome] = InboxApplier(app.database, app.consumers).apply([envelope])
    return outcome.status


def _meta_field(event: Message) -> Message | None:
    for fd in event.DESCRIPTOR.fields:
        if fd.message_type is not None and fd.message_type.name == "EventMeta":
            meta: Message = getattr(event, fd.name)
            return meta
    return None


def published(database: Database, event_class: type[E]) -> list[E]:
    """Every event of `event_class` the service's units of work wrote to its outbox, in commit order."""
    t = outbox_table
    query = select(t.c.payload).where(t.c.event_type == event_class.DESCRIPTOR.full_name).order_by(t.c.id)
    with database.engine.connect() as conn:
        return [event_class.FromString(payload) for payload in conn.execute(query).scalars()]


def unsent_events(database: Database) -> int:
    """Outbox rows the relay has not published yet."""
    t = outbox_table
    with database.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t).where(t.c.sent_at.is_(None))).scalar_one())
