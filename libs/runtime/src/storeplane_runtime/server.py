"""Server bootstrap every process uses: gRPC server, health, reflection, interceptors, graceful shutdown."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from storeplane_runtime.auth import auth_interceptor
from storeplane_runtime.idempotency import IdempotencyKeyHeader
from storeplane_runtime.interceptors import ServerSpans, ServiceInterceptor
from storeplane_runtime.settings import ServiceSettings
from storeplane_runtime.status import BASE_ERROR_TABLE, ErrorMapper, ErrorTable
from storeplane_runtime.telemetry import configure_tracing, serve_metrics, tracing_exported

__all__ = ["ServiceHost", "ServiceRegistration", "run_until_signal", "stop_on_signal"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceRegistration:
    """One gRPC service to serve: its full name, the generated `add_XServicer_to_server` and the servicer."""

    name: str
    add_to_server: Callable[[Any, grpc.Server], None]
    servicer: Any


@dataclass
class ServiceHost:
    """One gRPC server: the services it registers, health per service, reflection, and a clean stop."""

    settings: ServiceSettings
    registrations: Sequence[ServiceRegistration] = ()
    generic_handlers: Sequence[grpc.GenericRpcHandler] = ()
    # Names announced through health and reflection besides the registered ones (the gateway's fronted APIs).
    extra_service_names: Sequence[str] = ()
    error_table: ErrorTable = field(default_factory=lambda: BASE_ERROR_TABLE)
    interceptors: Sequence[grpc.ServerInterceptor] = ()
    # False for a pure forwarder (the gateway): no domain-error mapping, deadline budget or per-call metrics
    # interceptor (it keeps its own metrics), and a tracing interceptor only when spans are exported. Each
    # interceptor wraps every call in Python: on a forwarding hop they cost as much as the hop itself.
    standard_interceptors: bool = True
    # Services check every call's token, scopes and stores (storeplane_runtime.auth); the gateway passes its own
    # token-and-scopes interceptor in `interceptors`.
    authorise: bool = True
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    # Run when stopping begins, before the grace period: lets long-lived streams end cleanly instead of being cut.
    on_stopping: list[Callable[[], None]] = field(default_factory=list)
    # TLS for the port (the gateway's, given certificates), asked for once at start; None or returning None: plaintext.
    server_credentials: Callable[[], grpc.ServerCredentials | None] | None = None

    def __post_init__(self) -> None:
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.port = 0
        self._server: grpc.Server | None = None
        self._stopped = threading.Event()

    @property
    def service_names(self) -> list[str]:
        return [r.name for r in self.registrations] + list(self.extra_service_names)

    def start(self) -> int:
        """Bind, start serving and mark every service SERVING; returns the bound port."""
        s = self.settings
        configure_tracing(s.service_name)
        serve_metrics(s.metrics_port)
        chain: list[grpc.ServerInterceptor] = []
        exported = tracing_exported()
        if exported and not self.standard_interceptors:  # a bare chain (the gateway): its spans
            chain.append(ServerSpans(s.service_name))
        if self.standard_interceptors:
            chain.append(
                ServiceInterceptor(
                    ErrorMapper(domain=f"{s.service_name}.storeplane", table=self.error_table),
                    s.default_deadline_seconds,
                    trace_context=not exported,  # trace ids for logs and events, without spans
                    spans=exported,  # spans go somewhere: a SERVER span per call
                    serving=s.service_name,  # the service's name on them (the embedded stack runs five)
                )
            )
        if self.standard_interceptors and self.authorise:
            chain.append(auth_interceptor(s, [r.name for r in self.registrations]))
        if self.standard_interceptors:  # an idempotency-key header stands for an empty request_id
            chain.append(IdempotencyKeyHeader())
        chain.extend(self.interceptors)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=s.grpc_workers, thread_name_prefix=f"{s.service_name}-rpc"),
            interceptors=chain,
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        for reg in self.registrations:
            reg.add_to_server(reg.servicer, server)
        if self.generic_handlers:
            server.add_generic_rpc_handlers(tuple(self.generic_handlers))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if s.reflection != "off":
            reflection.enable_server_reflection(
                (
                    *self.service_names,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ),
                server,
            )
        credentials = self.server_credentials() if self.server_credentials is not None else None
        try:
            if credentials is None:
                self.port = server.add_insecure_port(f"{s.grpc_host}:{s.grpc_port}")
            else:
                self.port = server.add_secure_port(f"{s.grpc_host}:{s.grpc_port}", credentials)
        except RuntimeError:  # grpc's way of saying the address is taken or not ours
            self.port = 0
        if self.port == 0:
            raise OSError(f"{s.service_name}: cannot listen on {s.grpc_host}:{s.grpc_port} (address in use?)")
        server.start()
        self._server = server
        for name in ("", *self.service_names):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"service": s.service_name, "port": self.port})
        return self.port

    def stop(self, grace: float | None = None) -> None:
        """Health goes NOT_SERVING first, then in-flight calls get `grace` seconds while new ones are refused."""
        if self._server is None or self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        self.health.enter_graceful_shutdown()
        log.info("stopping", extra={"service": self.settings.service_name, "grace_seconds": grace})
        for hook in self.on_stopping:
            try:
                hook()
            except Exception:
                log.exception("stopping hook failed")
        self._server.stop(grace).wait()
        for hook in self.on_stop:
            try:
                hook()
            except Exception:
                log.exception("stop hook failed")
        log.info("stopped", extra={"service": self.settings.service_name})

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()


def stop_on_signal() -> threading.Event:
    """An event that SIGTERM or SIGINT sets from now on: for a process with work to do before it serves and
    blocks (its `run_until_signal(..., stop=)` then stops at once if a signal came meanwhile)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    return stop


def run_until_signal(
    hosts: Iterable[ServiceHost], *, drain_seconds: float = 0.0, stop: threading.Event | None = None
) -> None:
    """Block until SIGTERM or SIGINT (or `stop`, from `stop_on_signal`), then stop every host in parallel (health
    first, then grace)."""
    hosts = list(hosts)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    if stop is None:
        stop = stop_on_signal()
    try:
        while not stop.wait(0.5):
            pass
        for host in hosts:
            host.health.enter_graceful_shutdown()
        if drain_seconds:
            time.sleep(drain_seconds)  # let load balancers see NOT_SERVING before we refuse calls
        threads = [threading.Thread(target=h.stop, name=f"stop-{h.settings.service_name}") for h in hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
