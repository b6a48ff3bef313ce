"""The caller's side: a bearer token on every call of a channel, and this service's own token for its peers (from
AUTH_TOKEN_FILE, re-read when it changes, e.g. a Kubernetes projected token; or minted by the development issuer)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc

from storeplane_runtime.auth.issuer import DevIssuer
from storeplane_runtime.clients import DetailsInterceptor, replaced
from storeplane_runtime.identity import current_identity
from storeplane_runtime.settings import ServiceSettings, SettingsError

__all__ = ["ON_BEHALF_OF", "BearerToken", "ServiceToken", "service_token", "with_bearer"]

ON_BEHALF_OF = "x-on-behalf-of"  # the end caller's subject, for the peer's audit log only, never authority
REMINT_BEFORE_SECONDS = 300.0


class ServiceToken:
    """This process's own token: the file's content (looked at again at most once a second), or a development token
    with `scopes` for all stores, minted again before it expires."""

    def __init__(
        self,
        *,
        file: str = "",
        issuer: DevIssuer | None = None,
        subject: str = "",
        scopes: Iterable[str] | None = None,
        ttl_seconds: float = 12 * 3600,
    ) -> None:
        if not file and issuer is None:
            raise ValueError("a service token needs AUTH_TOKEN_FILE or a development issuer")
        self.file, self.issuer, self.subject = file, issuer, subject
        self.scopes = list(scopes) if scopes is not None else None
        self.ttl_seconds = ttl_seconds
        self._token = ""
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._expires = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        now = time.monotonic()
        if self.file:
            if now - self._checked >= 1.0 or not self._token:
                with self._lock:
                    self._checked = now
                    st = os.stat(self.file)
                    if (st.st_mtime, st.st_size) != self._stamp:
                        self._token = Path(self.file).read_text().strip()
                        self._stamp = (st.st_mtime, st.st_size)
            return self._token
        if time.time() >= self._expires - REMINT_BEFORE_SECONDS:
            with self._lock:
                assert self.issuer is not None
                self._token = self.issuer.mint(subject=self.subject, scopes=self.scopes, ttl_seconds=self.ttl_seconds)
                self._expires = time.time() + self.ttl_seconds
        return self._token


class BearerToken(DetailsInterceptor):
    """Adds `authorization: Bearer <token()>` to every call, and the subject of the call being handled (if any) as
    `x-on-behalf-of`."""

    def __init__(self, token: Callable[[], str]) -> None:
        self.token = token

    def details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [(k, v) for k, v in (details.metadata or ()) if k not in ("authorization", ON_BEHALF_OF)]
        metadata.append(("authorization", f"Bearer {self.token()}"))
        identity = current_identity()
        if identity is not None:
            metadata.append((ON_BEHALF_OF, identity.subject[:200]))
        return replaced(details, metadata=metadata)


def with_bearer(channel: grpc.Channel, token: Callable[[], str] | str) -> grpc.Channel:
    """`channel` with a bearer token on every call (a fixed string or a source such as `ServiceToken`)."""
    source = token if callable(token) else (lambda: token)
    return grpc.intercept_channel(channel, BearerToken(source))


def service_token(settings: ServiceSettings, *, scopes: Iterable[str]) -> ServiceToken:
    """The token `settings`' process calls its peers with: AUTH_TOKEN_FILE when set (production: a projected token or
    a sidecar's), else minted with `scopes` for all stores by the development issuer whose keys the process trusts
    (`make run`, `make up`: `<DATA_DIR>/auth`); neither is one line at start."""
    if settings.auth_token_file:
        return ServiceToken(file=settings.auth_token_file)
    jwks = settings.resolved_jwks_file()
    issuer = (
        DevIssuer(Path(jwks).parent, issuer=settings.auth_issuer, audience=settings.auth_audience) if jwks else None
    )
    if issuer is None or not issuer.key_file.exists():
        raise SettingsError(
            f"{settings.service_name}: calls its peers but has no AUTH_TOKEN_FILE (and no development key)"
        )
    return ServiceToken(issuer=issuer, subject=settings.service_name, scopes=scopes)
