"""Ask every process for its health and print a table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass(frozen=True)
class HealthRow:
    process: str
    address: str
    status: str


def check(address: str, service: str = "", timeout: float = 2.0) -> str:
    """SERVING / NOT_SERVING / … or the gRPC error code name when the process does not answer."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def check_all(addresses: Mapping[str, str], timeout: float = 2.0) -> list[HealthRow]:
    return [HealthRow(name, addr, check(addr, timeout=timeout)) for name, addr in addresses.items()]


def render(rows: Sequence[HealthRow]) -> str:
    width = max(len(r.process) for r in rows)
    addr_width = max(len(r.address) for r in rows)
    lines = [f"{'process':<{width}}  {'address':<{addr_width}}  status"]
    lines += [f"{r.process:<{width}}  {r.address:<{addr_width}}  {r.status}" for r in rows]
    return "\n".join(lines)
