"""How the CLI lays out the processes and their environments."""

from __future__ import annotations

import pytest

from storeplane_cli.main import main
from storeplane_cli.stack import Layout, database_url_for, distributed_environment


def test_layout_puts_the_gateway_first_and_services_on_the_next_ports() -> None:
    layout = Layout(host="127.0.0.1", base_port=6000)
    assert [layout.port(n) for n in ("gateway", "checkout", "stock", "customer", "loyalty")] == [
        6000,
        6001,
        6002,
        6003,
        6004,
    ]


def test_each_service_gets_its_own_database_on_the_shared_server() -> None:
    env = {"POSTGRES_URL": "postgresql+psycopg://app:secret@db:5432/postgres"}
    assert database_url_for("stock", env) == "postgresql+psycopg://app:secret@db:5432/storeplane_stock"
    assert database_url_for("stock", {**env, "DATABASE_URL_STOCK": "sqlite:///x.db"}) == "sqlite:///x.db"
    assert database_url_for("loyalty", {"DATA_DIR": "/d"}) == "sqlite:////d/loyalty.db"


def test_distributed_environment_points_every_process_at_its_peers() -> None:
    layout = Layout(base_port=6000)
    env = distributed_environment("checkout", layout, {"AMQP_URL": "amqp://b/", "DATA_DIR": "/d"})
    assert env["GRPC_PORT"] == "6001"
    assert env["STOCK_ADDR"] == "127.0.0.1:6002"
    assert env["AMQP_URL"] == "amqp://b/"
    assert env["DATABASE_URL"] == "sqlite:////d/checkout.db"
    gateway = distributed_environment("gateway", layout, {})
    assert "DATABASE_URL" not in gateway
    assert gateway["LOYALTY_ADDR"] == "127.0.0.1:6004"


def test_up_without_a_broker_url_stops_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("AMQP_URL", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["up"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "AMQP_URL" in err[0]
