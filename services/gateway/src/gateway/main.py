"""Wiring of the gateway: one channel per backend service, a router that forwards calls by service name, behind the
token and scope check, the rate limit per caller and, given certificates, TLS."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from gateway.proxy import Router
from gateway.rate_limit import RateLimitInterceptor, SubjectBudget
from gateway.settings import Settings
from gateway.tls import CertificateError, CertificateFiles
from pos.checkout.v1 import checkout_pb2
from pos.customer.v1 import customer_pb2
from pos.loyalty.v1 import loyalty_pb2
from pos.stock.v1 import stock_pb2
from storeplane_runtime.app import ServiceApp, command_line
from storeplane_runtime.auth import auth_interceptor
from storeplane_runtime.clients import PeerChannels
from storeplane_runtime.server import ServiceHost
from storeplane_runtime.settings import ServiceSettings, SettingsError

__all__ = ["FRONTED", "NAME", "Settings", "backend_addresses", "cli", "create_app"]

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


def create_app(settings: Settings) -> ServiceApp:
    channels = PeerChannels(
        default_timeout=settings.default_deadline_seconds, max_message_bytes=settings.max_message_bytes
    )
    routes: dict[str, grpc.Channel] = {
        service: channels.raw_channel(address) for service, address in backend_addresses(settings).items()
    }
    router = Router(routes, default_timeout=settings.default_deadline_seconds)
    # Token and scopes only (bodies stay undecoded; each service checks the stores again): a bad token ends here.
    # Then the rate limit, inside it: the verified subject is whose budget a call spends.
    interceptors: list[grpc.ServerInterceptor] = [auth_interceptor(settings, list(routes), check_stores=False)]
    budget = subject_budget(settings)
    if budget is not None:
        interceptors.append(RateLimitInterceptor(budget, domain=f"{settings.service_name}.storeplane"))
    certificates = certificate_files(settings)
    host = ServiceHost(
        settings,
        generic_handlers=[router],
        extra_service_names=list(routes),
        standard_interceptors=False,
        interceptors=interceptors,
        server_credentials=certificates.credentials if certificates is not None else None,
    )
    host.on_stop.append(channels.close)
    if budget is not None:
        host.on_stop.append(budget.close)
    return ServiceApp(NAME, settings, host)


def subject_budget(settings: Settings) -> SubjectBudget | None:
    """The calls budget per token subject (None: RATE_LIMIT_PER_SECOND=0, no limit)."""
    if not settings.rate_limit_per_second:
        return None
    return SubjectBudget(
        settings.rate_limit_per_second,
        settings.rate_limit_burst,
        storage_url=settings.rate_limit_storage_url,
        key_prefix=settings.rate_limit_key_prefix,
    )


def certificate_files(settings: Settings) -> CertificateFiles | None:
    """The port's TLS files, read once now so that unusable ones stop the start with one line (None: plaintext)."""
    if not settings.tls_cert_file:
        return None
    try:
        return CertificateFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    except CertificateError as exc:
        raise SettingsError(f"{settings.service_name}: {exc}") from None


def cli(argv: Sequence[str] | None = None) -> None:
    command_line(NAME, Settings, create_app, argv)
