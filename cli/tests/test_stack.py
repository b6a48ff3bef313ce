"""How the CLI lays out the processes and their environments, and the development keys both run modes trust."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_cli.main import banner, main
from storeplane_cli.seed import seed
from storeplane_cli.stack import EmbeddedStack, Layout, ProcessStack, database_url_for, distributed_environment
from storeplane_cli.tokens import dev_issuer
from storeplane_runtime.auth.client import with_bearer
from storeplane_runtime.status import details_of
from storeplane_runtime.testing import free_port_block, test_authority, wait_serving


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


def test_distributed_environment_points_every_process_at_the_development_keys(tmp_path: Path) -> None:
    env = distributed_environment(
        "stock", Layout(base_port=6000), {"DATA_DIR": "rel/data", "AUTH_JWKS_URL": "https://elsewhere/jwks"}
    )
    data_dir = Path("rel/data").absolute()
    assert env["DATA_DIR"] == str(data_dir)  # the key directory a peer-calling child signs with: DATA_DIR/auth
    assert env["AUTH_JWKS_FILE"] == str(data_dir / "auth" / "jwks.json")
    assert "AUTH_JWKS_URL" not in env
    assert env["REFLECTION"] == "open"
    assert distributed_environment("gateway", Layout(), {})["AUTH_JWKS_FILE"] == str(
        Path("var/auth/jwks.json").absolute()
    )


def test_the_banner_says_how_to_get_a_token_and_call_with_it() -> None:
    text = banner("127.0.0.1:50050", Path("var"), 50050)
    assert "storeplane token" in text and "--data-dir" not in text
    assert '-H "authorization: Bearer $(' in text
    assert "--data-dir /tmp/x" in banner("127.0.0.1:50050", Path("/tmp/x"), 50050)


def _get_item(address: str, token: str | None) -> stock_pb2.GetItemResponse:
    channel = grpc.insecure_channel(address)
    if token is not None:
        channel = with_bearer(channel, token)
    with channel:
        stub = stock_pb2_grpc.StockServiceStub(channel)
        return stub.GetItem(stock_pb2.GetItemRequest(store_id="berlin-mitte", sku="SHO-RUN-01-BLA-40"), timeout=10)


def _refusal(address: str, token: str | None) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        _get_item(address, token)
    return caught.value.code(), details_of(caught.value).reason


def test_embedded_stack_makes_keys_on_first_start_and_keeps_them_on_the_next(tmp_path: Path) -> None:
    """Through the gateway: a token of the data directory's issuer gets answers (the seed's and a person's), a call
    without one or with a stranger's is refused; a second start trusts the tokens of the first."""
    keys = tmp_path / "auth" / "dev-signing-key.pem"
    assert not keys.exists()
    layout = Layout(base_port=free_port_block(5))
    stack = EmbeddedStack(layout, tmp_path)
    stack.start()
    try:
        pem = keys.read_bytes()
        issuer = dev_issuer(tmp_path)
        gateway = layout.address("gateway")
        report = seed(gateway, issuer.mint(subject="seed"))
        assert report.ok, report.render()
        token = issuer.mint(subject="till-1", scopes=["stock.read"], stores=["berlin-mitte"])
        assert _get_item(gateway, token).item.sku == "SHO-RUN-01-BLA-40"
        assert _refusal(gateway, None) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
        assert _refusal(gateway, issuer.mint(ttl_seconds=-300)) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")
        assert _refusal(gateway, test_authority().token())[0] == grpc.StatusCode.UNAUTHENTICATED
        # The stock service checks again, stores included: a token for another store is refused there.
        other_store = issuer.mint(scopes=["stock.read"], stores=["zurich-bahnhofstrasse"])
        assert _refusal(layout.address("stock"), other_store)[0] == grpc.StatusCode.PERMISSION_DENIED
    finally:
        stack.stop(0)
    layout = Layout(base_port=free_port_block(5))
    again = EmbeddedStack(layout, tmp_path)
    again.start()
    try:
        assert keys.read_bytes() == pem
        assert _get_item(layout.address("gateway"), token).item.sku == "SHO-RUN-01-BLA-40"
    finally:
        again.stop(0)


def test_up_makes_the_keys_its_children_read(tmp_path: Path) -> None:
    layout = Layout(base_port=free_port_block(5))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMQP_URL", "DATABASE_URL", "AUTH_"))}
    stack = ProcessStack(layout, {**env, "DATA_DIR": str(tmp_path), "LOG_LEVEL": "WARNING"}, names=["stock"])
    stack.start()
    try:
        assert (tmp_path / "auth" / "jwks.json").exists()
        stock = layout.address("stock")
        wait_serving(stock, "pos.stock.v1.StockService")
        with pytest.raises(grpc.RpcError) as caught:
            _get_item(stock, dev_issuer(tmp_path).mint())
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # authorised: the item is just not there
        assert _refusal(stock, None) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
    finally:
        stack.stop()
    assert stack.children["stock"].returncode == 0


def test_seed_without_the_stacks_keys_stops_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It would otherwise make new keys whose tokens the running stack refuses, call by call."""
    with pytest.raises(SystemExit) as exited:
        main(["seed", "--data-dir", str(tmp_path), "--gateway", "127.0.0.1:1"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--token" in err[0]
    assert not (tmp_path / "auth").exists()
