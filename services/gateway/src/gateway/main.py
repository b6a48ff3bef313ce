"""Wiring of the gateway: one channel per backend service, a router that forwards calls by service name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from gateway.proxy import Router
from pos.checkout.v1 import checkout_pb2
from pos.customer.v1 import customer_pb2
from pos.loyalty.v1 import loyalty_pb2
from pos.stock.v1 import stock_pb2
from storeplane_runtime.app import ServiceApp, command_line
from storeplane_runtime.clients import PeerChannels
from storeplane_runtime.server import ServiceHost
from storeplane_runtime.settings import ServiceSettings

NAME = "gateway"

FRONTED = {
    "checkout": checkout_pb2.DESCRIPTOR.services_by_name["CheckoutService"].full_name,
    "stock": stock_pb2.DESCRIPTOR.services_by_name["StockService"].full_name,
    "customer": customer_pb2.DESCRIPTOR.services_by_name["CustomerService"].full_name,
    "loyalty": loyalty_pb2.DESCRIPTOR.services_by_name["LoyaltyService"].full_name,
}


class Settings(ServiceSettings):
    """Settings of the gateway (see docs/conventions.md); the *_ADDR variables say where the services are."""

    # Each forwarded call holds a worker for its whole life (streams too): more than a service needs.
    grpc_workers: int = 64


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
    host = ServiceHost(
        settings, generic_handlers=[router], extra_service_names=list(routes), standard_interceptors=False
    )
    host.on_stop.append(channels.close)
    return ServiceApp(NAME, settings, host)


def cli(argv: Sequence[str] | None = None) -> None:
    command_line(NAME, Settings, create_app, argv)
