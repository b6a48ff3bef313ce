"""Wiring of the checkout service: settings, database, peers (stock, customer, loyalty), servicer, item cache
consumer, basket expiry sweeper."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from checkout import metrics, use_cases
from checkout.api import ERROR_TABLE, NAME, SERVICE_DESCRIPTOR, CheckoutServicer
from checkout.consumers import checkout_consumers
from checkout.domain.baskets import BasketPolicy
from checkout.peers import Peers
from checkout.queries import CheckoutQueries
from checkout.settings import CheckoutSettings
from pos.checkout.v1 import checkout_pb2_grpc
from storeplane_runtime.app import ServiceApp, command_line
from storeplane_runtime.auth.client import BearerToken, service_token
from storeplane_runtime.clients import PeerChannels
from storeplane_runtime.db import Database
from storeplane_runtime.money import redemption_values
from storeplane_runtime.server import ServiceRegistration
from storeplane_runtime.settings import SettingsError
from storeplane_runtime.stores import load_stores
from storeplane_runtime.sweeps import Sweeper

Settings = CheckoutSettings  # the name other tooling imports
log = logging.getLogger(__name__)
SERVICE = SERVICE_DESCRIPTOR.full_name
PEER_SCOPES = ("stock.read", "stock.write", "customer.read", "loyalty.read", "loyalty.write")


def rules_of(settings: CheckoutSettings) -> use_cases.Rules:
    """The basket and money rules' configurable part, as these settings set it."""
    return use_cases.Rules(
        stores=load_stores(),
        policy=BasketPolicy(ttl=timedelta(seconds=settings.basket_ttl_seconds), max_lines=settings.max_basket_lines),
        redemption=redemption_values(settings.loyalty_redemption),
    )


def peer_credentials(settings: CheckoutSettings) -> BearerToken | None:
    """Checkout's own token on its calls to stock, customer and loyalty. Without one (no AUTH_TOKEN_FILE and no
    development key) checkout still starts and sells: the peers refuse its calls, so lines stay unreserved and
    AttachCustomer / RedeemPoints answer UNAVAILABLE; said once, loudly, at start."""
    try:
        return BearerToken(service_token(settings, scopes=PEER_SCOPES))
    except SettingsError as exc:
        log.error("%s; its calls to stock, customer and loyalty will be refused", exc)
        return None


def create_app(settings: CheckoutSettings) -> ServiceApp:
    """The checkout service, wired: its servicer with its peers, the item cache consumer and the expiry sweeper."""
    rules = rules_of(settings)
    channels = PeerChannels(
        default_timeout=settings.default_deadline_seconds,
        max_message_bytes=settings.max_message_bytes,
        credentials=peer_credentials(settings),
    )
    peers = Peers(settings, channels)

    def registrations(database: Database) -> list[ServiceRegistration]:
        queries = CheckoutQueries(database, peers)
        servicer = CheckoutServicer(database, settings, rules, peers, queries)
        return [ServiceRegistration(SERVICE, checkout_pb2_grpc.add_CheckoutServiceServicer_to_server, servicer)]

    app = ServiceApp.with_database(
        NAME,
        settings,
        registrations,
        package_file=__file__,
        error_table=ERROR_TABLE,
        consumers=checkout_consumers(),
    )
    assert app.database is not None
    metrics.watch(app.database)  # business counters from each commit's events
    # Baskets left open past their time expire, once each (safe beside replicas: rows are claimed with SKIP LOCKED).
    app.workers.append(
        Sweeper(
            "checkout-basket-expiry",
            app.database,
            lambda uow, now, limit: use_cases.expire_due(uow, now=now, limit=limit),
            interval=settings.expiry_sweep_seconds,
            batch=settings.expiry_batch_size,
            source=NAME,
        )
    )
    app.host.on_stopping.append(channels.close)
    return app


def cli(argv: Sequence[str] | None = None) -> None:
    command_line(NAME, CheckoutSettings, create_app, argv)
