"""Wiring of the stock service: settings, database, servicer, event consumers, expiry sweeper, live stock."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from pos.stock.v1 import stock_pb2_grpc
from stock import use_cases
from stock.answers import GetItemAnswers
from stock.api import ERROR_TABLE, NAME, SERVICE_DESCRIPTOR, StockServicer
from stock.consumers import stock_consumers
from stock.domain import StockPolicy
from stock.events import ITEM_UPDATED, STOCK_LEVEL_CHANGED
from stock.item_cache import ItemCache
from stock.queries import StockQueries
from stock.settings import StockSettings
from stock.watch import StockWatch
from storeplane_runtime.app import ServiceApp, command_line
from storeplane_runtime.broadcast import Broadcast, CommittedEventsFeed
from storeplane_runtime.db import Database
from storeplane_runtime.server import ServiceRegistration
from storeplane_runtime.stores import load_stores
from storeplane_runtime.sweeps import Sweeper

Settings = StockSettings  # the name other tooling imports


def policy_of(settings: StockSettings) -> StockPolicy:
    """The stock rules' configurable part, as these settings set it."""
    return StockPolicy(
        default_ttl=timedelta(seconds=settings.reservation_default_ttl_seconds),
        max_ttl=timedelta(seconds=settings.reservation_max_ttl_seconds),
        default_reorder_point=settings.default_reorder_point,
    )


def create_app(settings: StockSettings) -> ServiceApp:
    """The stock service, wired: its servicer, consumers, expiry sweeper, and the feeds of its caches and live stock."""
    policy = policy_of(settings)
    watch = StockWatch(settings.watch_queue_size)
    answers = GetItemAnswers(settings.get_item_cache_size, settings.get_item_cache_seconds)
    items = ItemCache()

    def registrations(database: Database) -> list[ServiceRegistration]:
        stores = load_stores()
        queries = StockQueries(database, stores, answers=answers, items=items)
        servicer = StockServicer(database, settings, stores, watch, policy, queries)
        add_servicer = stock_pb2_grpc.add_StockServiceServicer_to_server
        return [ServiceRegistration(SERVICE_DESCRIPTOR.full_name, add_servicer, servicer)]

    app = ServiceApp.with_database(
        NAME,
        settings,
        registrations,
        package_file=__file__,
        error_table=ERROR_TABLE,
        consumers=stock_consumers(policy),
    )
    assert app.database is not None
    if app.database.is_sqlite:  # one process: its own commits are all the commits
        app.database.on_committed_events(watch.committed)
    else:  # replicas: every replica's level changes (and item updates, for GetItem answers), through the database
        told = [STOCK_LEVEL_CHANGED, ITEM_UPDATED] if answers.enabled else [STOCK_LEVEL_CHANGED]
        app.database.broadcast(*told)

        def on_event(broadcast: Broadcast) -> None:
            answers.broadcast(broadcast)
            watch.changed(broadcast)

        def on_gap() -> None:
            answers.clear()
            watch.cut_off()

        feed = CommittedEventsFeed(
            app.database.url,
            told,
            on_event,
            on_gap=on_gap,
            # Kept answers need every change; without them, nobody watching means no notifications to read.
            wanted=None if answers.enabled else lambda: watch.subscriber_count() > 0,
        )
        watch.ensure_live = feed.ensure_listening
        answers.live = feed.live.is_set
        app.workers.append(feed)
    app.database.on_committed_events(items.committed)
    app.database.on_committed_events(answers.committed)
    app.host.on_stopping.append(watch.stop)
    # Reservations past their TTL give their units back (safe beside replicas: each leaves ACTIVE once).
    app.workers.append(
        Sweeper(
            "stock-expiry",
            app.database,
            lambda uow, now, limit: use_cases.expire_due(uow, policy, now=now, limit=limit),
            interval=settings.expiry_sweep_seconds,
            batch=settings.expiry_batch_size,
            source=NAME,
        )
    )
    return app


def cli(argv: Sequence[str] | None = None) -> None:
    command_line(NAME, StockSettings, create_app, argv)
