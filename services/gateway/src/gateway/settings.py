"""Settings of the gateway: the common process settings plus its per-caller rate limit and the TLS of its port."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from storeplane_runtime.settings import ServiceSettings

# One Redis (TLS or not, TCP or a socket): what the limiter is built and tested for. Sentinel and cluster URLs connect
# at construction (no failing open at start), memcached has no moving window: all refused at start.
REDIS_SCHEMES = ("redis://", "rediss://", "redis+unix://")


class Settings(ServiceSettings):
    """Settings of the gateway (see docs/conventions.md); the *_ADDR variables say where the services are."""

    # Each forwarded call holds a worker for its whole life (streams too): more than a service needs.
    grpc_workers: int = 64
    # Calls per second each token subject may make, on average, with bursts of up to RATE_LIMIT_BURST calls (a whole
    # multiple of the rate: see gateway/rate_limit.py); 0 turns the limit off.
    rate_limit_per_second: int = Field(default=1000, ge=0, le=1_000_000)
    rate_limit_burst: int = Field(default=2000, ge=1, le=10_000_000)
    # redis://host:port/db: one budget per subject shared by every replica; empty: each replica counts in memory.
    rate_limit_storage_url: str = ""
    # Prefix of the gateway's keys in that Redis (two deployments sharing one Redis keep apart with their own).
    rate_limit_key_prefix: str = Field(default="storeplane-gateway", min_length=1, max_length=200)
    # TLS on the gRPC port when both are set (PEM files, re-read when they change); with a client CA, only callers
    # presenting a certificate it signed get in (store edges).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""

    @field_validator("rate_limit_storage_url")
    @classmethod
    def _redis(cls, value: str) -> str:
        if value and not value.startswith(REDIS_SCHEMES):
            raise ValueError(f"must be a Redis URL ({', '.join(REDIS_SCHEMES)}), got {value.split('://')[0]!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        rate, burst = self.rate_limit_per_second, self.rate_limit_burst
        if rate and (burst < rate or burst % rate):
            raise ValueError(
                f"RATE_LIMIT_BURST ({burst}) must be a whole multiple of RATE_LIMIT_PER_SECOND ({rate}): "
                "the window it is counted in is BURST/RATE whole seconds"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE go together: set both or neither")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE (client certificates need TLS)")
        return self
