"""Wiring of the gateway (the edge): Envoy on the gateway's port in front of the four services, configured from the
contracts, and the companion it routes health and reflection to."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
from storeplane_runtime.server import ServiceHost, run_until_signal
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
    """The edge as `make run` and `storeplane up` run it: the companion on a loopback port, then Envoy as a child."""
    binary = envoy_binary(settings.envoy_binary)
    jwks = None if settings.auth_jwks_url else JwksServer(settings.resolved_jwks_file(), settings.edge_jwks_port)
    host, watch = companion_host(settings)
    envoy = envoy_process(settings, binary=binary, jwks_url=jwks.url if jwks is not None else "")
    app = EdgeApp(NAME, settings, host, envoy=envoy, jwks=jwks, watch=watch)
    app.workers.extend([watch, envoy])
    if jwks is not None:
        app.workers.append(jwks)
    return app


def companion_host(settings: Settings) -> tuple[ServiceHost, BackendWatch]:
    """The companion: loopback only, health without a token, reflection as REFLECTION says (Envoy has checked the
    token first when it is `token`). Its own metrics port stays closed: Envoy's stats are the gateway's metrics."""
    backends = backend_addresses(settings)
    companion_settings = settings.model_copy(
        update={"grpc_host": "127.0.0.1", "grpc_port": settings.edge_companion_port, "metrics_port": 0}
    )
    host = ServiceHost(
        companion_settings, extra_service_names=list(backends), standard_interceptors=False, authorise=False
    )
    return host, BackendWatch(host.health, backends)


def envoy_process(
    settings: Settings, *, binary: str, jwks_url: str, run_dir: Path | None = None, companion_port: int = 0
) -> EnvoyProcess:
    """Envoy for `settings`: the plan of its configuration, and the process that writes and runs it."""
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
    if run_dir is not None:  # an Envoy of its own image reads the descriptors from the rendered directory
        shutil.copyfile(descriptors, run_dir / descriptors.name)
        descriptors = run_dir / descriptors.name
    local_keys = not settings.auth_jwks_url
    plan = EdgePlan(
        listen_host=settings.grpc_host,
        listen_port=settings.grpc_port,
        backends=backends,
        companion=f"127.0.0.1:{companion_port}",
        descriptor_set=descriptors,
        openapi_file=None,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        jwks_url=settings.auth_jwks_url or jwks_url,
        # The companion's copy of the JWKS file is on loopback: fetched often, a rotated file is seen within 5 s.
        jwks_refresh_seconds=min(settings.auth_jwks_refresh_seconds, 5.0)
        if local_keys
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
        admin_port=settings.edge_admin_port,
        otlp_endpoint=_otlp_endpoint(),
        otlp_grpc=_otlp_protocol() == "grpc",
        span_flush_ms=int(os.environ.get("OTEL_BSP_SCHEDULE_DELAY", "5000") or 5000),
        service_name=settings.service_name,
        access_log=settings.log_level in ("DEBUG", "INFO"),
    )
    return EnvoyProcess(
        services,
        plan,
        binary=binary,
        concurrency=settings.envoy_concurrency,
        log_level=settings.envoy_log_level,
        tls_files=tls_files,
        openapi=_openapi_writer(descriptor_set_path()),
        run_dir=run_dir,
    )


def _otlp_protocol() -> str:
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")


def _otlp_endpoint() -> str:
    """Where Envoy sends its spans: the services' OTLP endpoint (OTLP/HTTP, or gRPC when the protocol says so)."""
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    if not endpoint or os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower() == "none":
        return ""
    return endpoint.removesuffix("/v1/traces")


def _openapi_writer(descriptors: Path) -> Callable[[Path], None]:
    """Writes the OpenAPI document of the contracts the edge serves (GET /openapi.json) at each start."""

    def write(target: Path) -> None:
        target.write_text(openapi.render(openapi.build_document(openapi.load_descriptor_set(descriptors))))

    return write


def cli(argv: Sequence[str] | None = None) -> None:
    """`python -m gateway [serve]`: Envoy as a child beside the companion (make run, storeplane up);
    `python -m gateway companion`: the companion alone, on EDGE_COMPANION_PORT and EDGE_JWKS_PORT, for a pod whose
    Envoy runs from the official image; `python -m gateway render DIR`: that Envoy's configuration, written to DIR."""
    command_line(NAME, Settings, _exiting_with_envoy, argv, commands={"render": render, "companion": companion})


def render(settings: Settings, arguments: list[str]) -> None:
    """Writes the bootstrap of an Envoy in a container of its own, and the files it names, into the one directory
    given (that Envoy mounts it at the same path)."""
    if len(arguments) != 1:
        raise SettingsError("gateway: render takes one argument, the directory to write the configuration into")
    target = Path(arguments[0])
    target.mkdir(parents=True, exist_ok=True)
    envoy = envoy_process(
        settings,
        binary="",
        jwks_url=f"http://127.0.0.1:{settings.edge_jwks_port}/jwks.json",
        run_dir=target,
        companion_port=settings.edge_companion_port,
    )
    print(envoy.write())


def companion(settings: Settings, arguments: list[str]) -> None:
    """The companion alone (health of the edge, reflection, the JWKS file), until SIGTERM or SIGINT."""
    if arguments or not (settings.edge_companion_port and (settings.edge_jwks_port or settings.auth_jwks_url)):
        raise SettingsError("gateway: companion takes no argument and needs EDGE_COMPANION_PORT and EDGE_JWKS_PORT")
    jwks = None if settings.auth_jwks_url else JwksServer(settings.resolved_jwks_file(), settings.edge_jwks_port)
    host, watch = companion_host(settings)
    if jwks is not None:
        jwks.start()
    host.start()
    watch.start()
    run_until_signal([host])
    watch.stop()
    if jwks is not None:
        jwks.stop()


def _exiting_with_envoy(settings: Settings) -> ServiceApp:
    """The served edge, as a process of its own: when Envoy dies, the process ends too (exit 3), so that whoever
    runs it (storeplane up, a supervisor) sees the edge is gone instead of a companion answering for nothing."""
    app = create_app(settings)
    assert isinstance(app, EdgeApp)
    assert app.envoy is not None
    app.envoy.on_exit = lambda code: os._exit(3)
    return app
