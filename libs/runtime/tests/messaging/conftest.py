"""Fixtures of the messaging tests: a RabbitMQ vhost per test run, broker stop/start that is always undone,
and service databases with an `effects` table that counts what handlers did."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from messaging_kit import Broker, ServiceDb, effects_metadata, rabbitmqctl  # noqa: E402

from storeplane_runtime.db import Database  # noqa: E402
from storeplane_runtime.outbox import messaging_metadata  # noqa: E402


def need(server: str, reason: str) -> None:
    # The CI rule lives in the root conftest: fail in CI, skip elsewhere.
    sys.modules["conftest"].need(server, reason)


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[str]:
    """An AMQP URL to a fresh vhost (guest/guest on 127.0.0.1:5672), deleted after the run."""
    if shutil.which("rabbitmqctl") is None:
        need("RabbitMQ", "rabbitmqctl not found")
    vhost = f"sp_test_{uuid.uuid4().hex[:10]}"
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    try:
        rabbitmqctl("add_vhost", vhost)
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        pika.BlockingConnection(pika.URLParameters(url)).close()
    except Exception as exc:
        need("RabbitMQ", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    yield url
    rabbitmqctl("delete_vhost", vhost, check=False)


@pytest.fixture
def broker(rabbitmq: str) -> Iterator[Broker]:
    b = Broker()
    try:
        yield b
    finally:
        if b.stopped:
            b.start()


@pytest.fixture
def make_db() -> Iterator[Callable[[str], ServiceDb]]:
    made: list[Database] = []

    def make(url: str) -> ServiceDb:
        db = Database(url)
        messaging_metadata.create_all(db.engine)
        effects_metadata.create_all(db.engine)
        made.append(db)
        return ServiceDb(db)

    yield make
    for db in made:
        db.dispose()
