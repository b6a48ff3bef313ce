"""What the edge's Envoy configuration depends on besides the contracts (addresses, keys, limits, files), and the
small helpers every part of the generator uses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["EdgePlan"]


@dataclass(frozen=True)
class EdgePlan:
    """Everything the configuration depends on besides the contracts: addresses, keys, limits, files."""

    listen_host: str
    listen_port: int
    backends: Mapping[str, str]  # full service name -> host:port
    companion: str  # host:port of the edge companion (health of the whole, reflection, the JWKS file over HTTP)
    descriptor_set: Path
    openapi_file: Path | None
    issuer: str
    audience: str
    jwks_url: str  # where Envoy fetches the keys (the companion's /jwks.json serves AUTH_JWKS_FILE)
    jwks_refresh_seconds: float
    leeway_seconds: float
    default_deadline_seconds: float
    max_message_bytes: int
    rate_per_second: int  # per token subject; 0: no limit
    rate_burst: int
    anonymous_rate_per_second: int  # per client address, calls without a token; 0: no limit
    anonymous_burst: int
    rate_limit_subjects: int  # token buckets kept (LRU); more active subjects than this start full again
    reflection: str  # open, token, off
    cors_origins: Sequence[str] = ()
    tls_secret_file: Path | None = None  # SDS file naming the certificate and key (watched)
    tls_client_ca_secret_file: Path | None = None  # SDS file naming the client CA (Envoy takes one secret a file)
    tls_watch_dir: Path | None = None
    client_certificates: bool = False
    metrics_port: int = 0
    admin_port: int = 0
    otlp_endpoint: str = ""
    service_name: str = "gateway"
    retry_attempts: int = 2
    span_flush_ms: int = 5000
    access_log: bool = True  # a JSON line per call (LOG_LEVEL INFO or DEBUG, as the services' RPC lines)
    otlp_grpc: bool = False  # OTLP over gRPC (OTEL_EXPORTER_OTLP_PROTOCOL=grpc) instead of OTLP/HTTP protobuf
    extra: Mapping[str, Any] = field(default_factory=dict)


def typed(name: str) -> str:
    """The type URL of Envoy's config message `envoy.<name>`."""
    return f"type.googleapis.com/envoy.{name}"


def duration(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"
