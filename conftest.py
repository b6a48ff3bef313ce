"""Fixtures every test directory shares: real PostgreSQL databases and free ports.

In CI (CI=true) a test that needs PostgreSQL, RabbitMQ or Redis fails when the server is missing; elsewhere it skips
(`storeplane_runtime.testing.need`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from storeplane_runtime.testing import free_port, need

POSTGRES_ADMIN_URL = os.environ.get("STOREPLANE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[object]:
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=2)
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:
        engine.dispose()
        need("PostgreSQL", str(exc).splitlines()[0])
    yield engine
    engine.dispose()


@pytest.fixture
def make_postgres_url(postgres_admin: object) -> Iterator[Callable[[], str]]:
    """Creates fresh, uniquely named databases and drops them after the test."""
    from sqlalchemy import Engine, text
    from sqlalchemy.engine import make_url

    admin: Engine = postgres_admin  # type: ignore[assignment]
    created: list[str] = []

    def make() -> str:
        name = f"sp_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    yield make
    with admin.connect() as conn:
        for name in created:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def postgres_url(make_postgres_url: Callable[[], str]) -> str:
    return make_postgres_url()


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    return f"sqlite:///{tmp_path}/test.db"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Runs a test on both database kinds."""
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
        return url
    postgres: str = request.getfixturevalue("postgres_url")
    return postgres


RABBITMQ_BASE_URL = os.environ.get("STOREPLANE_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672")


@pytest.fixture
def make_amqp_url() -> Iterator[Callable[[], str]]:
    """Creates fresh RabbitMQ vhosts (guest may use them) and deletes them after the test: a test's exchanges and
    queues are its own, whatever an earlier run left behind."""
    import shutil
    import subprocess

    if shutil.which("rabbitmqctl") is None:
        need("RabbitMQ", "rabbitmqctl not found")
    created: list[str] = []

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120, check=False)

    def make() -> str:
        vhost = f"sp_test_{uuid.uuid4().hex[:10]}"
        added = ctl("add_vhost", vhost)
        if added.returncode != 0:
            need("RabbitMQ", ((added.stderr or added.stdout).strip() or "add_vhost failed").splitlines()[-1])
        created.append(vhost)
        ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return f"{RABBITMQ_BASE_URL}/{vhost}"

    yield make
    for vhost in created:
        ctl("delete_vhost", vhost)
