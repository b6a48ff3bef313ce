"""Wiring of the customer service: settings, database, gRPC host."""

from __future__ import annotations

from collections.abc import Sequence

from pos.customer.v1 import customer_pb2, customer_pb2_grpc
from storeplane_runtime.app import ServiceApp, command_line
from storeplane_runtime.db import Database
from storeplane_runtime.server import ServiceRegistration
from storeplane_runtime.settings import ServiceSettings

NAME = "customer"
SERVICE = customer_pb2.DESCRIPTOR.services_by_name["CustomerService"].full_name


class Settings(ServiceSettings):
    """Settings of the customer service (see docs/conventions.md)."""


def create_app(settings: Settings) -> ServiceApp:
    def registrations(database: Database) -> list[ServiceRegistration]:
        # The business logic is not built yet: the generated base servicer answers UNIMPLEMENTED.
        servicer = customer_pb2_grpc.CustomerServiceServicer()
        return [ServiceRegistration(SERVICE, customer_pb2_grpc.add_CustomerServiceServicer_to_server, servicer)]

    return ServiceApp.with_database(NAME, settings, registrations, package_file=__file__)


def cli(argv: Sequence[str] | None = None) -> None:
    command_line(NAME, Settings, create_app, argv)
