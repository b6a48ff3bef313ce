"""Wiring of the loyalty service: settings, database, gRPC host."""

from __future__ import annotations

from collections.abc import Sequence

from pos.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from storeplane_runtime.app import ServiceApp, command_line
from storeplane_runtime.db import Database
from storeplane_runtime.server import ServiceRegistration
from storeplane_runtime.settings import ServiceSettings

NAME = "loyalty"
SERVICE = loyalty_pb2.DESCRIPTOR.services_by_name["LoyaltyService"].full_name


class Settings(ServiceSettings):
    """Settings of the loyalty service (see docs/conventions.md)."""


def create_app(settings: Settings) -> ServiceApp:
    def registrations(database: Database) -> list[ServiceRegistration]:
        # The business logic is not built yet: the generated base servicer answers UNIMPLEMENTED.
        servicer = loyalty_pb2_grpc.LoyaltyServiceServicer()
        return [ServiceRegistration(SERVICE, loyalty_pb2_grpc.add_LoyaltyServiceServicer_to_server, servicer)]

    return ServiceApp.with_database(NAME, settings, registrations, package_file=__file__)


def cli(argv: Sequence[str] | None = None) -> None:
    command_line(NAME, Settings, create_app, argv)
