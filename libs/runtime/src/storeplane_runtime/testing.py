"""Helpers for tests and benchmarks of storeplane processes (ports, waiting for health)."""

from __future__ import annotations

import random
import socket
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


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
