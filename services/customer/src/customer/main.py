"""Wiring of the customer service: settings, database, servicer, event consumers, erasure sweeper."""

from __future__ import annotations

from collections.abc import Sequence

from customer import use_cases
from customer.api import ERROR_TABLE, NAME, SERVICE_DESCRIPTOR, CustomerServicer
from customer.consumers import customer_consumers
from customer.queries import CustomerQueries
from customer.settings import CustomerSettings, store_countries
from pos.customer.v1 import customer_pb2_grpc
from storeplane_runtime.app import ServiceApp, command_line
from storeplane_runtime.db import Database
from storeplane_runtime.server import ServiceRegistration
from storeplane_runtime.stores import load_stores
from storeplane_runtime.sweeps import Sweeper

Settings = CustomerSettings  # the name other tooling imports
SERVICE = SERVICE_DESCRIPTOR.full_name


def create_app(settings: CustomerSettings) -> ServiceApp:
    """The customer service, wired: its servicer and the consumer of checkout's sales and returns."""

    def registrations(database: Database) -> list[ServiceRegistration]:
        countries = store_countries(load_stores(), settings)
        queries = CustomerQueries(database, export_page_size=settings.export_page_size)
        servicer = CustomerServicer(database, settings, countries, queries)
        add_servicer = customer_pb2_grpc.add_CustomerServiceServicer_to_server
        return [ServiceRegistration(SERVICE, add_servicer, servicer)]

    app = ServiceApp.with_database(
        NAME,
        settings,
        registrations,
        package_file=__file__,
        error_table=ERROR_TABLE,
        consumers=customer_consumers(),
    )
    assert app.database is not None
    # Events unsent when their customer was erased (and the erasure events) leave the outbox once sent.
    app.workers.append(
        Sweeper(
            "customer-erasures",
            app.database,
            use_cases.forget_erased,
            interval=settings.erasure_sweep_seconds,
            batch=settings.erasure_sweep_batch,
            source=NAME,
        )
    )
    return app


def cli(argv: Sequence[str] | None = None) -> None:
    command_line(NAME, CustomerSettings, create_app, argv)
