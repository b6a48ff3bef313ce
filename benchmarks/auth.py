"""Authorisation per hop: the p50 of the same RPC on two hosts, one checking token, scopes and stores and one not,
called alternately (the difference is what authorisation adds); and a first verification, uncached, for reference."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import grpc

from benchmarks.harness import Bench, Figure, percentile, scenario
from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_runtime.auth.client import with_bearer
from storeplane_runtime.auth.keys import KeySet
from storeplane_runtime.auth.tokens import TokenVerifier
from storeplane_runtime.server import ServiceHost, ServiceRegistration
from storeplane_runtime.settings import ServiceSettings
from storeplane_runtime.testing import TestAuthority

STOCK = stock_pb2.DESCRIPTOR.services_by_name["StockService"].full_name


class _Shelf(stock_pb2_grpc.StockServiceServicer):
    """Answers GetAvailability at once: what is measured is the path around the servicer."""

    def GetAvailability(self, request: object, context: object) -> stock_pb2.GetAvailabilityResponse:
        return stock_pb2.GetAvailabilityResponse()


def _host(authority: TestAuthority, *, authorise: bool) -> ServiceHost:
    settings = ServiceSettings(
        service_name="stock", grpc_host="127.0.0.1", grpc_port=0, auth_jwks_file=authority.jwks_file
    )
    registration = ServiceRegistration(STOCK, stock_pb2_grpc.add_StockServiceServicer_to_server, _Shelf())
    return ServiceHost(settings, registrations=[registration], authorise=authorise)


@scenario("auth_per_hop", "security")
def auth_per_hop(bench: Bench) -> list[Figure]:
    count = 500 if bench.quick else 5000
    with tempfile.TemporaryDirectory() as directory:
        authority = TestAuthority(Path(directory))
        checked, open_ = _host(authority, authorise=True), _host(authority, authorise=False)
        ports = checked.start(), open_.start()
        token = authority.token(subject="edge-berlin", scopes=["stock.read"], stores=["berlin-mitte"])
        request = stock_pb2.GetAvailabilityRequest(store_id="berlin-mitte", skus=["SHO-1"])
        try:
            with (
                with_bearer(grpc.insecure_channel(f"127.0.0.1:{ports[0]}"), token) as a,
                with_bearer(grpc.insecure_channel(f"127.0.0.1:{ports[1]}"), token) as b,
            ):
                calls = (
                    stock_pb2_grpc.StockServiceStub(a).GetAvailability,
                    stock_pb2_grpc.StockServiceStub(b).GetAvailability,
                )
                samples: tuple[list[float], list[float]] = ([], [])
                for i in range(count + 200):
                    for which in (i % 2, 1 - i % 2):  # alternate which goes first
                        started = time.perf_counter()
                        calls[which](request, timeout=5)
                        if i >= 200:
                            samples[which].append(time.perf_counter() - started)
        finally:
            checked.stop(0)
            open_.stop(0)
        with_auth, without = percentile(samples[0], 50) * 1000, percentile(samples[1], 50) * 1000
        verifier = TokenVerifier(KeySet(file=authority.jwks_file), issuer="storeplane-dev", audience="storeplane")
        fresh = [authority.token(subject=f"till-{i}") for i in range(100 if bench.quick else 300)]
        started = time.perf_counter()
        for t in fresh:
            verifier.verify(t)
        first = (time.perf_counter() - started) / len(fresh) * 1000
    return [
        Figure(
            "auth_added_p50_ms",
            round(with_auth - without, 4),
            "ms",
            at_most=0.2,
            note=f"p50 {with_auth:.3f} ms checked vs {without:.3f} ms not",
        ),
        Figure("auth_first_verification_ms", round(first, 4), "ms", note="ES256, uncached (then kept by hash)"),
    ]
