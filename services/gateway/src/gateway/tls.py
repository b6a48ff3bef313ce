"""TLS of the gateway's port: its certificate and key and, for store edges, the CA their client certificates must be
signed by, from PEM files that are read again when they change (a renewal needs no restart)."""

from __future__ import annotations

import logging
import os
import threading

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

__all__ = ["CertificateError", "CertificateFiles"]

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int, int], ...]


class CertificateError(Exception):
    """The files hold no usable certificate, key or CA; the message says which, in one line."""


class CertificateFiles:
    """The PEM files of the port's TLS, checked before each new connection.

    gRPC calls `fetch` before every new connection's handshake: it answers the files' new configuration when one of
    them changed (a Kubernetes Secret update swaps them all at once) and they make a usable set, and None (keep
    serving the current one) otherwise. A half-done rotation (a new certificate beside the old key) is never served;
    connections already open keep the certificate they were made with.
    """

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str = "") -> None:
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self._lock = threading.Lock()
        self._seen = self._stamp()
        self._initial = self._load()

    @property
    def requires_client_certificates(self) -> bool:
        return bool(self.client_ca_file)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self.fetch,  # type: ignore[arg-type]  # None means "no change", as gRPC documents; its stubs omit it
            require_client_authentication=self.requires_client_certificates,
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration if the files changed since last looked at (and are usable), else None."""
        try:
            stamp = self._stamp()
        except CertificateError:
            return None  # a file missing for a moment mid-rotation: keep serving, look again at the next connection
        if stamp == self._seen:
            return None
        with self._lock:
            if stamp == self._seen:
                return None
            # Remembered even when unusable: such files are read once, not on every connection, until they change.
            self._seen = stamp
            try:
                return self._load()
            except CertificateError as exc:
                log.warning("TLS files changed but are not usable; the previous certificate is still served: %s", exc)
                return None

    def _stamp(self) -> Stamp:
        stamps = []
        named = (("TLS_CERT_FILE", self.cert_file), ("TLS_KEY_FILE", self.key_file))
        for variable, path in (*named, ("TLS_CLIENT_CA_FILE", self.client_ca_file)):
            if not path:
                continue
            try:
                st = os.stat(path)  # follows the symlinks a Secret volume swaps
            except OSError as exc:
                raise CertificateError(f"cannot read {variable} {path}: {exc.strerror}") from None
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev))
        return tuple(stamps)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        chain_pem, key_pem = _read(self.cert_file, "TLS_CERT_FILE"), _read(self.key_file, "TLS_KEY_FILE")
        try:
            chain = x509.load_pem_x509_certificates(chain_pem)
        except ValueError:
            raise CertificateError(f"TLS_CERT_FILE {self.cert_file} holds no PEM certificate") from None
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            raise CertificateError(f"TLS_KEY_FILE {self.key_file} holds no unencrypted PEM private key") from None
        if _public_der(chain[0].public_key()) != _public_der(key.public_key()):
            raise CertificateError(f"TLS_KEY_FILE {self.key_file} is not the key of the certificate in TLS_CERT_FILE")
        roots = None
        if self.client_ca_file:
            roots = _read(self.client_ca_file, "TLS_CLIENT_CA_FILE")
            try:
                x509.load_pem_x509_certificates(roots)
            except ValueError:
                raise CertificateError(f"TLS_CLIENT_CA_FILE {self.client_ca_file} holds no PEM certificate") from None
        leaf = chain[0]
        log.info(
            "TLS certificate loaded",
            extra={
                "certificate_subject": leaf.subject.rfc4514_string()[:200],
                "not_after": leaf.not_valid_after_utc.isoformat(),
                "client_certificates": "required" if roots else "not asked for",
            },
        )
        return grpc.ssl_server_certificate_configuration([(key_pem, chain_pem)], root_certificates=roots)


def _read(path: str, variable: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CertificateError(f"cannot read {variable} {path}: {exc.strerror}") from None


def _public_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
