"""Wiring of the loyalty service: settings, database, servicer, event consumers, and the sweepers of expired holds,
expired lots and tiers, all on one injectable clock."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from loyalty import metrics, use_cases
from loyalty.api import ERROR_TABLE, NAME, SERVICE_DESCRIPTOR, HoldBatching, LoyaltyServicer
from loyalty.consumers import loyalty_consumers
from loyalty.queries import LoyaltyQueries
from loyalty.settings import LoyaltySettings
from pos.loyalty.v1 import loyalty_pb2_grpc
from storeplane_runtime.app import ServiceApp, command_line
from storeplane_runtime.clock import utcnow
from storeplane_runtime.db import Database
from storeplane_runtime.server import ServiceRegistration
from storeplane_runtime.stores import load_stores
from storeplane_runtime.sweeps import Sweeper

Settings = LoyaltySettings  # the name other tooling imports
SERVICE = SERVICE_DESCRIPTOR.full_name


def create_app(settings: LoyaltySettings, clock: Callable[[], datetime] = utcnow) -> ServiceApp:
    """The loyalty service, wired. `clock` is the one time source of the API, consumers and sweepers (tests jump
    it by years)."""
    policy = settings.policy()

    def registrations(database: Database) -> list[ServiceRegistration]:
        queries = LoyaltyQueries(database, policy)
        batching = HoldBatching(settings.hold_batch_size, settings.hold_batch_lanes, settings.hold_batch_linger_seconds)
        servicer = LoyaltyServicer(
            database,
            policy,
            queries,
            load_stores(),
            page_token_key=settings.page_token_key,
            clock=clock,
            batching=batching,
        )
        add_servicer = loyalty_pb2_grpc.add_LoyaltyServiceServicer_to_server
        return [ServiceRegistration(SERVICE, add_servicer, servicer)]

    app = ServiceApp.with_database(
        NAME,
        settings,
        registrations,
        package_file=__file__,
        error_table=ERROR_TABLE,
        consumers=loyalty_consumers(policy, clock),
    )
    assert app.database is not None
    metrics.watch(app.database)  # business counters from each commit's events
    batch = settings.sweep_batch_size
    # Each step moves a row out of its due state under its account's lock: safe beside other replicas.
    app.workers.extend(
        [
            Sweeper(
                "loyalty-hold-expiry",
                app.database,
                lambda uow, now, limit: use_cases.expire_holds(uow, now=now, limit=limit),
                interval=settings.hold_sweep_seconds,
                batch=batch,
                source=NAME,
                clock=clock,
            ),
            Sweeper(
                "loyalty-lot-expiry",
                app.database,
                lambda uow, now, limit: use_cases.expire_lots(uow, now=now, limit=limit),
                interval=settings.lot_sweep_seconds,
                batch=batch,
                source=NAME,
                clock=clock,
            ),
            Sweeper(
                "loyalty-erased-events",
                app.database,
                lambda uow, now, limit: use_cases.forget_erased_events(
                    uow, now=now, limit=limit, window=timedelta(hours=settings.erased_events_window_hours)
                ),
                interval=settings.erasure_sweep_seconds,
                batch=batch,
                source=NAME,
                clock=clock,
            ),
            Sweeper(
                "loyalty-tiers",
                app.database,
                lambda uow, now, limit: use_cases.recheck_tiers(uow, policy, now=now, limit=limit),
                interval=settings.tier_sweep_seconds,
                batch=batch,
                source=NAME,
                clock=clock,
            ),
        ]
    )
    return app


def cli(argv: Sequence[str] | None = None) -> None:
    command_line(NAME, LoyaltySettings, create_app, argv)
