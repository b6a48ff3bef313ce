"""Fixtures of the messaging tests: a RabbitMQ vhost per test run, broker stop/start that is always undone,
and service databases with an `effects` table that counts what handlers did."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from messaging_kit import Broker, Pipeline, ServiceDb, effects_metadata, rabbitmqctl  # noqa: E402

from storeplane_runtime.db import Database  # noqa: E402
from storeplane_runtime.messaging import MessagingSettings  # noqa: E402
from storeplane_runtime.tables import messaging_metadata  # noqa: E402
from storeplane_runtime.testing import need  # noqa: E402


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


@pytest.fixture
def fresh_rabbitmq(rabbitmq: str) -> Iterator[str]:
    """An AMQP URL to a vhost of this test alone (on top of `rabbitmq`, which applies the CI rule)."""
    from messaging_kit import create_vhost, drop_vhost

    url = create_vhost()
    try:
        yield url
    finally:
        drop_vhost(url)


@pytest.fixture
def make_pipeline(
    request: pytest.FixtureRequest, make_db: Callable[[str], ServiceDb], tmp_path: Path
) -> Iterator[Callable[..., Pipeline]]:
    """Builds started producer -> relay -> bus -> consumer pipelines ("rabbitmq": two fresh PostgreSQL databases
    and queues of a service name of their own in the run's vhost; "inprocess": two SQLite files and a bus of their
    own). After the test it stops them first, then deletes what it created."""
    from messaging_kit import FAST, Pipeline, delete_queues, recorder, unique_name
    from sqlalchemy import text

    from storeplane_runtime.messaging import InProcessBus
    from storeplane_runtime.messaging.topology import QueueNames

    made: list[Pipeline] = []
    databases: list[str] = []
    admin: Any = None

    def postgres_db() -> ServiceDb:
        name = f"sp_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        databases.append(name)
        return make_db(admin.url.set(database=name).render_as_string(hide_password=False))

    def make(kind: str, settings: MessagingSettings = FAST) -> Pipeline:
        nonlocal admin
        rec = recorder(unique_name())
        service = f"checkout-{unique_name()}"
        if kind == "rabbitmq":
            url = request.getfixturevalue("rabbitmq")  # session-scoped (the CI rule when the broker is missing)
            admin = request.getfixturevalue("postgres_admin")  # likewise for PostgreSQL
            pipeline = Pipeline(kind, postgres_db(), postgres_db(), rec, service, settings, url=url)
        elif kind == "inprocess":
            n = len(made)
            producer = make_db(f"sqlite:///{tmp_path}/producer{n}.db")
            consumer_db = make_db(f"sqlite:///{tmp_path}/consumer{n}.db")
            pipeline = Pipeline(kind, producer, consumer_db, rec, service, settings, bus=InProcessBus())
        else:
            raise ValueError(kind)
        made.append(pipeline)
        pipeline.start()
        return pipeline

    yield make
    for pipeline in reversed(made):
        pipeline.stop()
    for pipeline in made:
        pipeline.producer.database.dispose()
        pipeline.consumer_db.database.dispose()
    for pipeline in made:
        if pipeline.kind == "rabbitmq":
            delete_queues(pipeline.url, QueueNames(pipeline.name, pipeline.settings.events_retry_delays).all())
    if databases:
        with admin.connect() as conn:
            for name in databases:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
