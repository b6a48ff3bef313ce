"""The gateway process's commands: `render` writes a configuration an Envoy of its own image accepts, `companion`
serves health, reflection and the JWKS file alone, and a served edge whose Envoy dies ends its process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from gateway_kit import FakeBackend
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.edge import descriptor_set_path, envoy_binary
from gateway.main import FRONTED
from storeplane_runtime.auth.issuer import DevIssuer
from storeplane_runtime.testing import free_port, free_port_block, wait_until

REPO = Path(__file__).resolve().parents[3]


def _environment(backend_port: int, jwks_file: Path, **extra: str) -> dict[str, str]:
    backend = f"127.0.0.1:{backend_port}"
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TLS_", "RATE_LIMIT_"))},
        "CHECKOUT_ADDR": backend,
        "STOCK_ADDR": backend,
        "CUSTOMER_ADDR": backend,
        "LOYALTY_ADDR": backend,
        "AUTH_JWKS_FILE": str(jwks_file),
        "GRPC_HOST": "127.0.0.1",
        **extra,
    }


@pytest.fixture
def served_backend() -> Iterator[int]:
    backend = FakeBackend()
    server, port = backend.serve()
    yield port
    server.stop(None)


def test_render_writes_a_configuration_envoy_accepts_with_the_companions_fixed_ports(
    tmp_path: Path, issuer: DevIssuer, served_backend: int
) -> None:
    target = tmp_path / "etc-envoy"
    env = _environment(
        served_backend,
        issuer.jwks_file,
        GRPC_PORT="50050",
        METRICS_PORT="9450",
        EDGE_COMPANION_PORT="50060",
        EDGE_JWKS_PORT="50061",
        EDGE_ADMIN_PORT="9901",
    )
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "render", str(target)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in target.iterdir()) == ["descriptor_set.binpb", "envoy.json", "openapi.json"]
    assert (target / "descriptor_set.binpb").read_bytes() == descriptor_set_path().read_bytes()
    assert json.loads((target / "openapi.json").read_text()) == json.loads((REPO / "docs" / "openapi.json").read_text())
    config = json.loads((target / "envoy.json").read_text())
    text = json.dumps(config)
    assert str(target / "descriptor_set.binpb") in text and str(target / "openapi.json") in text
    assert "http://127.0.0.1:50061/jwks.json" in text
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    listeners = {
        listener["name"]: listener["address"]["socket_address"] for listener in config["static_resources"]["listeners"]
    }
    assert listeners["edge"]["port_value"] == 50050 and listeners["metrics"]["port_value"] == 9450
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    companion = clusters["edge_companion"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert companion["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 50060}
    checked = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(target / "envoy.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr[-2000:]


def test_render_without_a_directory_stops_with_one_line(issuer: DevIssuer, served_backend: int) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "render"],
        env=_environment(served_backend, issuer.jwks_file),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "gateway: render takes one argument, the directory to write the configuration into"
    ]


def test_the_companion_alone_serves_health_of_the_backends_reflection_and_the_jwks_file(
    issuer: DevIssuer, served_backend: int
) -> None:
    base = free_port_block(2)
    env = _environment(
        served_backend,
        issuer.jwks_file,
        EDGE_COMPANION_PORT=str(base),
        EDGE_JWKS_PORT=str(base + 1),
        LOG_LEVEL="WARNING",
    )
    child = subprocess.Popen([sys.executable, "-m", "gateway", "companion"], env=env)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{base}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def serving() -> bool:
                try:
                    answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=True)
                except grpc.RpcError:
                    return False
                return answer.status == health_pb2.HealthCheckResponse.SERVING

            wait_until(serving, 20, "the companion says the edge's backends are serving")
            stock = health.Check(health_pb2.HealthCheckRequest(service=FRONTED["stock"]), timeout=2)
            assert stock.status == health_pb2.HealthCheckResponse.SERVING
            listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            names = {s.name for answer in listing for s in answer.list_services_response.service}
            assert names >= set(FRONTED.values())
        with urllib.request.urlopen(f"http://127.0.0.1:{base + 1}/jwks.json", timeout=5) as answer:
            assert json.loads(answer.read()) == json.loads(issuer.jwks_file.read_text())
    finally:
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=20) == 0


def test_a_served_edge_whose_envoy_dies_ends_its_process(issuer: DevIssuer, served_backend: int) -> None:
    port = free_port()
    env = _environment(served_backend, issuer.jwks_file, GRPC_PORT=str(port), METRICS_PORT="0", LOG_LEVEL="WARNING")
    child = subprocess.Popen([sys.executable, "-m", "gateway"], env=env)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:

            def answering() -> bool:
                try:
                    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                except grpc.RpcError:
                    return False
                return True

            wait_until(answering, 30, "the edge answers health checks")
        envoys = _children(child.pid)
        assert len(envoys) == 1, envoys
        os.kill(envoys[0], signal.SIGKILL)
        assert child.wait(timeout=20) == 3
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(x) for x in (task / "children").read_text().split())
    return found
