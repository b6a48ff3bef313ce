"""Process settings read from the environment, validated once at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "BACKGROUND_CONNECTIONS",
    "DEFAULT_METRICS_PORTS",
    "DEFAULT_PORTS",
    "ServiceSettings",
    "SettingsError",
    "describe",
    "load_settings",
]

DEFAULT_PORTS = {"gateway": 50050, "checkout": 50051, "stock": 50052, "customer": 50053, "loyalty": 50054}
# Connections a process may hold outside its gRPC workers: relay, consumer, expiry sweeper, import writers.
BACKGROUND_CONNECTIONS = 8
DEFAULT_METRICS_PORTS = {"gateway": 9450, "checkout": 9451, "stock": 9452, "customer": 9453, "loyalty": 9454}


class ServiceSettings(BaseSettings):
    """What every process reads: where to listen, where its database and broker are, how to shut down."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    service_name: str = "service"
    grpc_host: str = "0.0.0.0"
    grpc_port: int = Field(default=0, ge=0, le=65535)
    grpc_workers: int = Field(default=16, ge=1, le=512)
    metrics_port: int = Field(default=0, ge=0, le=65535)
    data_dir: Path = Path("var")
    database_url: str = ""
    # Connections the pool keeps open (PostgreSQL). 0: one per gRPC worker plus room for the background workers
    # (relay, consumer, sweepers, import writers). A pool smaller than the calls in flight opens and closes a
    # connection (a server process) for every call beyond it.
    database_pool_size: int = Field(default=0, ge=0, le=1000)
    amqp_url: str = ""
    auto_migrate: bool = True
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=600)
    default_deadline_seconds: float = Field(default=10.0, gt=0, le=3600)
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    log_level: str = "INFO"
    checkout_addr: str = "127.0.0.1:50051"
    stock_addr: str = "127.0.0.1:50052"
    customer_addr: str = "127.0.0.1:50053"
    loyalty_addr: str = "127.0.0.1:50054"
    # Bearer tokens (storeplane_runtime.auth): who issues them, for which audience, where the public keys are (a JWKS
    # file, re-read when it changes, or URL; no file named: `<DATA_DIR>/auth/jwks.json`, which `make run` / `make up`
    # create with the development issuer), how much clock skew is forgiven.
    auth_issuer: str = "storeplane-dev"
    auth_audience: str = "storeplane"
    auth_jwks_file: str = ""
    auth_jwks_url: str = ""
    auth_leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    auth_jwks_refresh_seconds: float = Field(default=60.0, gt=0, le=3600)
    # This process's own token for its calls to peers (re-read when the file changes); empty: none.
    auth_token_file: str = ""
    # Server reflection: open to anyone (dev), for any valid token, or not served (prod).
    reflection: Literal["open", "token", "off"] = "open"
    # Secret that signs list RPCs' page tokens (storeplane_runtime.paging); every replica needs the same one.
    # Empty: a development key derived from the service name.
    page_token_key: str = ""

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("checkout_addr", "stock_addr", "customer_addr", "loyalty_addr")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"must be host:port, got {value!r}")
        return value

    def resolved_jwks_file(self) -> str:
        """The JWKS file to read, unless keys come from AUTH_JWKS_URL."""
        if self.auth_jwks_url:
            return ""
        return self.auth_jwks_file or str(self.data_dir / "auth" / "jwks.json")

    def resolved_pool_size(self) -> int:
        return self.database_pool_size or self.grpc_workers + BACKGROUND_CONNECTIONS

    def resolved_database_url(self) -> str:
        """The configured URL, or a SQLite file named after the service under DATA_DIR."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / (self.service_name + '.db')}"


S = TypeVar("S", bound=ServiceSettings)


class SettingsError(SystemExit):
    """Raised with a one-line message when the environment holds a wrong setting."""


def load_settings(cls: type[S], service_name: str, **overrides: Any) -> S:
    """Read settings for one service; a wrong value ends the process with one line saying which and why."""
    defaults: dict[str, Any] = {
        "service_name": service_name,
        "grpc_port": DEFAULT_PORTS.get(service_name, 0),
        "metrics_port": DEFAULT_METRICS_PORTS.get(service_name, 0),
    }
    try:
        # Environment wins over the per-service defaults; explicit overrides win over both.
        from_env = cls()
        chosen = {k: getattr(from_env, k) for k in from_env.model_fields_set}
        return cls.model_validate({**defaults, **chosen, **overrides})
    except ValidationError as exc:
        raise SettingsError(f"{service_name}: bad setting: {describe(exc)}") from None


def describe(exc: ValidationError) -> str:
    """One line naming every wrong setting (as its environment variable) and what is wrong with it."""
    parts = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]).upper() or "settings"
        parts.append(f"{name}={err.get('input')!r}: {err['msg']}")
    return "; ".join(parts)
