"""A service calls its peers with its own token (a file re-read when it changes, or minted by the development
issuer), and the end caller's subject travels along for the audit log only."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_runtime.auth.client import ON_BEHALF_OF, BearerToken, ServiceToken, service_token
from storeplane_runtime.auth.issuer import DevIssuer
from storeplane_runtime.auth.keys import KeySet
from storeplane_runtime.auth.tokens import TokenVerifier
from storeplane_runtime.clients import PeerChannels
from storeplane_runtime.identity import Identity, acting_as, current_identity
from storeplane_runtime.server import ServiceHost, ServiceRegistration
from storeplane_runtime.settings import ServiceSettings, SettingsError

STOCK = stock_pb2.DESCRIPTOR.services_by_name["StockService"].full_name


class _Peer(stock_pb2_grpc.StockServiceServicer):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def GetAvailability(self, request: object, context: grpc.ServicerContext) -> stock_pb2.GetAvailabilityResponse:
        identity = current_identity()
        assert identity is not None
        behalf = dict((k, v) for k, v in context.invocation_metadata() if isinstance(v, str)).get(ON_BEHALF_OF, "")
        self.seen.append((identity.subject, behalf))
        return stock_pb2.GetAvailabilityResponse()


@pytest.fixture
def issuer(tmp_path: Path) -> DevIssuer:
    return DevIssuer(tmp_path / "auth").ensure()


@pytest.fixture
def peer(issuer: DevIssuer) -> Iterator[tuple[_Peer, int]]:
    servicer = _Peer()
    settings = ServiceSettings(
        service_name="stock", grpc_host="127.0.0.1", grpc_port=0, auth_jwks_file=str(issuer.jwks_file)
    )
    host = ServiceHost(
        settings,
        registrations=[ServiceRegistration(STOCK, stock_pb2_grpc.add_StockServiceServicer_to_server, servicer)],
    )
    yield servicer, host.start()
    host.stop(0)


def test_a_service_calls_its_peer_as_itself_and_names_the_end_caller(
    issuer: DevIssuer, peer: tuple[_Peer, int], tmp_path: Path
) -> None:
    servicer, port = peer
    settings = ServiceSettings(service_name="checkout", data_dir=tmp_path)
    token = service_token(settings, scopes=["stock.read"])
    channels = PeerChannels(credentials=BearerToken(token))
    stub = stock_pb2_grpc.StockServiceStub(channels.channel(f"127.0.0.1:{port}"))
    request = stock_pb2.GetAvailabilityRequest(store_id="berlin-mitte", skus=["X"])
    with acting_as(Identity("till-7", frozenset({"checkout.write"}), frozenset({"berlin-mitte"}))):
        stub.GetAvailability(request)
    stub.GetAvailability(request)  # work of its own (a sweeper): nobody on whose behalf
    channels.close()
    assert servicer.seen == [("checkout", "till-7"), ("checkout", "")]
    verified = TokenVerifier(KeySet(file=str(issuer.jwks_file)), issuer="storeplane-dev", audience="storeplane")
    identity = verified.verify(token())
    assert identity.all_stores and identity.scopes == {"stock.read"}


def test_the_token_file_is_read_again_when_it_changes(issuer: DevIssuer, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(issuer.mint(subject="first") + "\n")
    token = service_token(ServiceSettings(service_name="checkout", auth_token_file=str(path)), scopes=[])
    assert isinstance(token, ServiceToken)
    first = token()
    assert first == path.read_text().strip()
    path.write_text(issuer.mint(subject="rotated"))
    os.utime(path, (time.time() + 5, time.time() + 5))  # a new mtime, however coarse the filesystem's clock
    deadline = time.monotonic() + 5
    while token() == first:
        assert time.monotonic() < deadline, "the rotated token was never read"
        time.sleep(0.1)
    assert token() == path.read_text()


def test_no_token_file_and_no_development_key_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="AUTH_TOKEN_FILE"):
        service_token(ServiceSettings(service_name="checkout", data_dir=tmp_path / "empty"), scopes=["stock.read"])
