"""TLS on the edge's port (Envoy, its files through SDS): certificates made here with `cryptography`; plaintext and
uncertified callers refused, client certificates checked against the store edges' CA, and a certificate replaced on
disk served without a restart. Envoy re-reads the files when a file is MOVED into the certificate's directory (as a
Secret volume's `..data` swap or `os.replace` does), not when one is written in place."""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from gateway_kit import OWN_CONNECTIONS, WAIT, FakeBackend, RunningGateway, get_item
from grpc_health.v1 import health_pb2, health_pb2_grpc

from storeplane_runtime.auth.issuer import DevIssuer
from storeplane_runtime.settings import SettingsError
from storeplane_runtime.testing import wait_until

Gateways = Callable[..., RunningGateway]
CONNECT = 3.0  # a refused handshake fails fast; this only bounds a broken test


@dataclass(frozen=True)
class Issued:
    """A key and its certificate, as PEM."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: Issued | None, *, ca: bool = False, server: bool = False
) -> Issued:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.certificate.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    signer = issuer.key if issuer else key
    return Issued(key, builder.sign(signer, hashes.SHA256()))


def make_ca(name: str) -> Issued:
    return _certificate(name, ec.generate_private_key(ec.SECP256R1()), None, ca=True)


def issue(ca: Issued, subject: str, *, server: bool) -> Issued:
    return _certificate(subject, ec.generate_private_key(ec.SECP256R1()), ca, server=server)


def write(path: Path, data: bytes) -> None:
    """Replace the file at once (as a Secret volume update does): no reader ever sees half of it."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


@dataclass
class Pki:
    """A server CA and the gateway's certificate from it, a store edges' CA and a till's certificate from it."""

    directory: Path
    server_ca: Issued
    edge_ca: Issued
    till: Issued

    @property
    def cert_file(self) -> Path:
        return self.directory / "tls.crt"

    @property
    def key_file(self) -> Path:
        return self.directory / "tls.key"

    @property
    def client_ca_file(self) -> Path:
        return self.directory / "edge-ca.crt"

    def serve(self, certificate: Issued) -> None:
        write(self.key_file, certificate.key_pem)
        write(self.cert_file, certificate.pem)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    server_ca, edge_ca = make_ca("storeplane test server CA"), make_ca("storeplane test store edges CA")
    pki = Pki(tmp_path / "tls", server_ca, edge_ca, issue(edge_ca, "till berlin-mitte 1", server=False))
    pki.directory.mkdir()
    pki.serve(issue(server_ca, "gateway", server=True))
    write(pki.client_ca_file, edge_ca.pem)
    return pki


def tls_channel(gateway: RunningGateway, trusted: Issued, client: Issued | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=trusted.pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.pem if client else None,
    )
    channel = grpc.secure_channel(gateway.address, credentials, options=OWN_CONNECTIONS)
    gateway.channels.append(channel)
    return channel


def serving(channel: grpc.Channel) -> bool:
    """Whether a health check over `channel` (a new connection) is answered."""
    try:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=CONNECT)
    except grpc.RpcError as error:
        refused = error
    else:
        return answer.status == health_pb2.HealthCheckResponse.SERVING
    assert refused.code() is grpc.StatusCode.UNAVAILABLE, refused  # a failed handshake, not another failure
    return False


def test_a_tls_client_is_served_and_a_plaintext_one_is_not(
    make_gateway: Gateways, pki: Pki, issuer: DevIssuer, backend: FakeBackend
) -> None:
    gateway = make_gateway(tls_cert_file=str(pki.cert_file), tls_key_file=str(pki.key_file))
    channel = tls_channel(gateway, pki.server_ca)
    assert serving(channel)
    assert get_item(channel, issuer.mint(scopes=["stock.read"]), b"over tls") == b"echo:over tls"
    assert not serving(gateway.channel())
    assert not serving(tls_channel(gateway, make_ca("a CA the gateway's certificate is not from")))
    assert backend.calls == 1


def test_with_a_client_ca_only_callers_with_a_certificate_it_signed_get_in(make_gateway: Gateways, pki: Pki) -> None:
    gateway = make_gateway(
        tls_cert_file=str(pki.cert_file), tls_key_file=str(pki.key_file), tls_client_ca_file=str(pki.client_ca_file)
    )
    assert serving(tls_channel(gateway, pki.server_ca, client=pki.till))
    assert not serving(tls_channel(gateway, pki.server_ca))  # no certificate
    stranger = issue(make_ca("some other CA"), "till elsewhere", server=False)
    assert not serving(tls_channel(gateway, pki.server_ca, client=stranger))
    assert not serving(gateway.channel())


def test_a_certificate_replaced_on_disk_is_served_to_new_connections_without_a_restart(
    make_gateway: Gateways, pki: Pki
) -> None:
    gateway = make_gateway(tls_cert_file=str(pki.cert_file), tls_key_file=str(pki.key_file))
    before = tls_channel(gateway, pki.server_ca)
    assert serving(before)

    renewed_ca = make_ca("storeplane test server CA, renewed")
    pki.serve(issue(renewed_ca, "gateway", server=True))
    # Each attempt is a new channel, so a new connection and handshake: the new certificate's, at once.
    wait_until(lambda: serving(tls_channel(gateway, renewed_ca)), timeout=WAIT, what="the renewed certificate served")
    assert not serving(tls_channel(gateway, pki.server_ca))  # new connections no longer get the old one
    assert serving(before)  # the connection made before keeps working


def test_a_client_ca_replaced_on_disk_decides_new_connections_without_a_restart(
    make_gateway: Gateways, pki: Pki
) -> None:
    gateway = make_gateway(
        tls_cert_file=str(pki.cert_file), tls_key_file=str(pki.key_file), tls_client_ca_file=str(pki.client_ca_file)
    )
    assert serving(tls_channel(gateway, pki.server_ca, client=pki.till))
    new_edge_ca = make_ca("storeplane test store edges CA, renewed")
    new_till = issue(new_edge_ca, "till berlin-mitte 1", server=False)
    write(pki.client_ca_file, new_edge_ca.pem)
    wait_until(
        lambda: serving(tls_channel(gateway, pki.server_ca, client=new_till)),
        timeout=WAIT,
        what="a till of the new CA let in",
    )
    assert not serving(tls_channel(gateway, pki.server_ca, client=pki.till))


def test_a_half_replaced_pair_is_not_served_until_the_key_matches(make_gateway: Gateways, pki: Pki) -> None:
    gateway = make_gateway(tls_cert_file=str(pki.cert_file), tls_key_file=str(pki.key_file))
    renewed_ca = make_ca("storeplane test server CA, renewed")
    renewed = issue(renewed_ca, "gateway", server=True)
    write(pki.cert_file, renewed.pem)  # the new certificate beside the old key: a rotation caught halfway
    assert serving(tls_channel(gateway, pki.server_ca))  # the previous pair is still served
    assert not serving(tls_channel(gateway, renewed_ca))
    write(pki.key_file, renewed.key_pem)
    wait_until(lambda: serving(tls_channel(gateway, renewed_ca)), timeout=WAIT, what="the completed pair served")


def test_files_rewritten_in_place_are_served_after_the_next_move_into_their_directory(
    make_gateway: Gateways, pki: Pki
) -> None:
    gateway = make_gateway(tls_cert_file=str(pki.cert_file), tls_key_file=str(pki.key_file))
    renewed_ca = make_ca("storeplane test server CA, renewed")
    renewed = issue(renewed_ca, "gateway", server=True)
    pki.key_file.write_bytes(renewed.key_pem)  # in place: no move, so no reload yet
    pki.cert_file.write_bytes(renewed.pem)
    assert serving(tls_channel(gateway, pki.server_ca))
    write(pki.directory / "..data", b"")  # any move into the directory makes Envoy read every file again
    wait_until(lambda: serving(tls_channel(gateway, renewed_ca)), timeout=WAIT, what="the rewritten pair served")


@pytest.mark.parametrize("problem", ["key of another certificate", "missing key file", "not PEM"])
def test_unusable_tls_files_stop_the_start_with_one_line(make_gateway: Gateways, pki: Pki, problem: str) -> None:
    if problem == "key of another certificate":
        write(pki.key_file, issue(pki.server_ca, "someone else", server=True).key_pem)
    elif problem == "missing key file":
        pki.key_file.unlink()
    else:
        write(pki.cert_file, b"hello")
    with pytest.raises(SettingsError) as stopped:
        make_gateway(tls_cert_file=str(pki.cert_file), tls_key_file=str(pki.key_file))
    message = str(stopped.value.code)
    assert message.startswith("gateway: ")
    assert "\n" not in message
    assert "TLS_KEY_FILE" in message or "TLS_CERT_FILE" in message
