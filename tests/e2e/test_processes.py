"""Each of the five processes starts on its own, reports SERVING and lists its services by reflection;
the gateway forwards calls that carry a token to the services; the embedded stack starts all five in one process,
with development keys of its own that `storeplane token` signs with."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from pos.customer.v1 import customer_pb2, customer_pb2_grpc
from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_runtime.auth.client import with_bearer
from storeplane_runtime.status import details_of
from storeplane_runtime.testing import free_port_block, test_authority, wait_serving

from .conftest import SERVICES


def test_every_process_is_serving_and_lists_its_services(distributed: dict[str, str]) -> None:
    for name, service in SERVICES.items():
        wait_serving(distributed[name], service)
        with grpc.insecure_channel(distributed[name]) as channel:
            listed = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert service in listed
        assert "grpc.health.v1.Health" in listed
    with grpc.insecure_channel(distributed["gateway"]) as channel:
        listed = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert set(SERVICES.values()) <= listed
        for service in SERVICES.values():
            wait_serving(distributed["gateway"], service)


def _answered_by(error: grpc.RpcError, service: str, method: str) -> bool:
    """The status came from the named backend: its ErrorInfo domain, or its own UNIMPLEMENTED message."""
    if error.code() == grpc.StatusCode.UNIMPLEMENTED:
        return f"{service}/{method}" in (error.details() or "")
    return details_of(error).domain == f"{service.split('.')[1]}.storeplane"


def test_gateway_forwards_each_call_to_its_service(distributed: dict[str, str]) -> None:
    with with_bearer(grpc.insecure_channel(distributed["gateway"]), test_authority().token()) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            stock_pb2_grpc.StockServiceStub(channel).GetItem(stock_pb2.GetItemRequest(), timeout=5)
        assert _answered_by(caught.value, "pos.stock.v1.StockService", "GetItem")
        with pytest.raises(grpc.RpcError) as caught:
            customer_pb2_grpc.CustomerServiceStub(channel).GetCustomer(customer_pb2.GetCustomerRequest(), timeout=5)
        assert _answered_by(caught.value, "pos.customer.v1.CustomerService", "GetCustomer")
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/pos.nothing.v1.NothingService/Nope")(b"", timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_gateway_refuses_a_call_without_a_token_before_forwarding_it(distributed: dict[str, str]) -> None:
    with grpc.insecure_channel(distributed["gateway"]) as channel, pytest.raises(grpc.RpcError) as caught:
        stock_pb2_grpc.StockServiceStub(channel).GetItem(stock_pb2.GetItemRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert details_of(caught.value).domain == "gateway.storeplane"


def _storeplane(*argv: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "storeplane_cli", *argv], capture_output=True, text=True, cwd=cwd, timeout=60, check=True
    )
    return done.stdout


def test_embedded_stack_starts_all_five_and_stops_on_sigterm(tmp_path: Path) -> None:
    base_port = free_port_block(5)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "storeplane_cli",
            "run",
            "--no-seed",
            "--data-dir",
            str(tmp_path / "data"),
            "--base-port",
            str(base_port),
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert f"gateway at 127.0.0.1:{base_port}" in banner
        for i, service in enumerate(["", *SERVICES.values()]):
            wait_serving(f"127.0.0.1:{base_port + i}", service if i else "")
        for name in SERVICES:
            assert (tmp_path / "data" / f"{name}.db").exists()
        assert (tmp_path / "data" / "auth" / "jwks.json").exists()
        token = _storeplane("token", "--data-dir", str(tmp_path / "data"), cwd=tmp_path).strip()
        request = stock_pb2.GetItemRequest(store_id="berlin-mitte", sku="SHO-RUN-01-BLA-40")
        for channel, refused in (
            (with_bearer(grpc.insecure_channel(f"127.0.0.1:{base_port}"), token), grpc.StatusCode.NOT_FOUND),
            (grpc.insecure_channel(f"127.0.0.1:{base_port}"), grpc.StatusCode.UNAUTHENTICATED),
        ):
            with channel, pytest.raises(grpc.RpcError) as caught:
                stock_pb2_grpc.StockServiceStub(channel).GetItem(request, timeout=5)
            # With the token the call reaches stock (no demo data: --no-seed); without, the gateway stops it.
            assert caught.value.code() == refused
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_embedded_stack_stops_gracefully_on_sigterm_while_it_loads_the_demo_data(tmp_path: Path) -> None:
    base_port = free_port_block(5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "storeplane_cli", "run", "--data-dir", str(tmp_path / "data")]
        + ["--base-port", str(base_port), "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        assert "gateway at" in proc.stdout.readline()  # up; the demo data starts loading now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not (tmp_path / "data" / ".seeded").exists()  # cut short: loaded again on the next start
    finally:
        if proc.poll() is None:
            proc.kill()
