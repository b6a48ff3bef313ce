"""Wiring of the gateway (the edge): Envoy on the gateway's port in front of the four services, configured from the
contracts, and the companion it routes health and reflection to."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway import openapi
from gateway.edge import BackendWatch, EnvoyProcess, JwksServer, descriptor_set_path, envoy_binary, load_services
from gateway.envoy_config import EdgePlan
from gateway.settings import Settings
from gateway.tls import CertificateError, CertificateFiles
from pos.checkout.v1 import checkout_pb2
from pos.customer.v1 import customer_pb2
from pos.loyalty.v1 import loyalty_pb2
from pos.stock.v1 import stock_pb2
from storeplane_runtime.app import ServiceApp, command_line
from storeplane_runtime.server import ServiceHost
from storeplane_runtime.settings import ServiceSettings, SettingsError

__all__ = ["FRONTED", "NAME", "EdgeApp", "Settings", "backend_addresses", "cli", "create_app"]

log = logging.getLogger(__name__)

NAME = "gateway"

FRONTED = {
    "checkout": checkout_pb2.DESCRIPTOR.services_by_name["CheckoutService"].full_name,
    "stock": stock_pb2.DESCRIPTOR.services_by_name["StockService"].full_name,
    "customer": customer_pb2.DESCRIPTOR.services_by_name["CustomerService"].full_name,
    "loyalty": loyalty_pb2.DESCRIPTOR.services_by_name["LoyaltyService"].full_name,
}


def backend_addresses(settings: ServiceSettings) -> Mapping[str, str]:
    return {
        FRONTED["checkout"]: settings.checkout_addr,
        FRONTED["stock"]: settings.stock_addr,
        FRONTED["customer"]: settings.customer_addr,
        FRONTED["loyalty"]: settings.loyalty_addr,
    }


@dataclass
class EdgeApp(ServiceApp):
    """The companion's host first (Envoy routes to its port), then Envoy on the gateway's port, then the watch of
    the backends; `start` returns Envoy's port, the gateway's address."""

    envoy: EnvoyProcess | None = None
    jwks: JwksServer | None = None
    watch: BackendWatch | None = None
    extra_stops: list[object] = field(default_factory=list)

    def start(self) -> int:
        assert self.envoy is not None
        assert self.watch is not None
        if self.jwks is not None:
            self.jwks.start()
        companion_port = self.host.start()
        self.envoy.plan = _with_companion(self.envoy.plan, companion_port)
        try:
            self.envoy.start()
        except BaseException:
            self.host.stop(0)
            raise
        self.watch.edge_up = self.envoy.running
        self.watch.start()
        return self.envoy.plan.listen_port

    def stop(self, grace: float | None = None) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()
        self.host.stop(0 if grace is None else min(grace, 1.0))


def _with_companion(plan: EdgePlan, port: int) -> EdgePlan:
    from dataclasses import replace

    return replace(plan, companion=f"127.0.0.1:{port}")


def create_app(settings: Settings) -> ServiceApp:
    binary = envoy_binary(settings.envoy_binary)
    descriptors = descriptor_set_path()
    backends = backend_addresses(settings)
    services = load_services(list(backends), descriptors)
    tls_files = None
    if settings.tls_cert_file:
        try:  # unusable files stop the start with one line, before Envoy would
            CertificateFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
        except CertificateError as exc:
            raise SettingsError(f"{settings.service_name}: {exc}") from None
        tls_files = (
            str(Path(settings.tls_cert_file).absolute()),
            str(Path(settings.tls_key_file).absolute()),
            str(Path(settings.tls_client_ca_file).absolute()) if settings.tls_client_ca_file else "",
        )
    jwks = None if settings.auth_jwks_url else JwksServer(settings.resolved_jwks_file())
    plan = EdgePlan(
        listen_host=settings.grpc_host,
        listen_port=settings.grpc_port,
        backends=backends,
        companion="127.0.0.1:0",
        descriptor_set=descriptors,
        openapi_file=None,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        jwks_url=settings.auth_jwks_url or (jwks.url if jwks is not None else ""),
        jwks_refresh_seconds=min(settings.auth_jwks_refresh_seconds, 5.0)
        if jwks is not None
        else settings.auth_jwks_refresh_seconds,
        leeway_seconds=settings.auth_leeway_seconds,
        default_deadline_seconds=settings.default_deadline_seconds,
        max_message_bytes=settings.max_message_bytes,
        rate_per_second=settings.rate_limit_per_second,
        rate_burst=settings.rate_limit_burst,
        anonymous_rate_per_second=settings.anonymous_rate_limit_per_second,
        anonymous_burst=settings.anonymous_rate_limit_burst,
        rate_limit_subjects=settings.rate_limit_subjects,
        reflection=settings.reflection,
        cors_origins=tuple(settings.allowed_origins()),
        metrics_port=settings.metrics_port,
        otlp_endpoint=_otlp_http_endpoint(),
        span_flush_ms=int(os.environ.get("OTEL_BSP_SCHEDULE_DELAY", "5000") or 5000),
        service_name=settings.service_name,
    )
    envoy = EnvoyProcess(
        services,
        plan,
        binary=binary,
        concurrency=settings.envoy_concurrency,
        log_level=settings.envoy_log_level,
        tls_files=tls_files,
        openapi=_openapi_writer(descriptors),
    )
    # The companion: loopback only, no token needed for health; reflection as REFLECTION says (Envoy checks the
    # token first when it is `token`). Its own metrics port stays closed: Envoy's stats are the gateway's metrics.
    companion_settings = settings.model_copy(update={"grpc_host": "127.0.0.1", "grpc_port": 0, "metrics_port": 0})
    host = ServiceHost(
        companion_settings,
        extra_service_names=list(backends),
        standard_interceptors=False,
        authorise=False,
    )
    watch = BackendWatch(host.health, backends)
    app = EdgeApp(NAME, settings, host, envoy=envoy, jwks=jwks, watch=watch)
    app.workers.extend([watch, envoy])
    if jwks is not None:
        app.workers.append(jwks)
    return app


def _otlp_http_endpoint() -> str:
    """Where Envoy sends its spans: the OTLP/HTTP endpoint the services use (a gRPC one on 4317 is not Envoy's)."""

    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    if not endpoint or os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower() == "none":
        return ""
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    if protocol == "grpc":
        return ""  # Envoy's OpenTelemetry tracer is configured here for OTLP/HTTP only
    return endpoint.removesuffix("/v1/traces")


def _openapi_writer(descriptors: Path) -> Callable[[Path], None]:
    """Writes the OpenAPI document of the contracts the edge serves (GET /openapi.json) at each start."""

    def write(target: Path) -> None:
        target.write_text(openapi.render(openapi.build_document(openapi.load_descriptor_set(descriptors))))

    return write


def cli(argv: Sequence[str] | None = None) -> None:
    command_line(NAME, Settings, create_app, argv)
