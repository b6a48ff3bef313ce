"""The customer writes, one function each, inside the caller's unit of work: storage loads and locks, the domain
decides, storage writes, and the events the domain decided on go to the outbox of the same transaction."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from datetime import datetime

from customer import events, storage
from customer.domain import (
    Customer,
    CustomerNotFound,
    Profile,
    ProfileDraft,
    Purchase,
    PurchaseStats,
    Refund,
    check_update,
    erased,
    new_card_number,
    register,
    taken_error,
    update,
)
from customer.events import CustomerEvent
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.erasure import forget_sent_events, rewrite_answers, scrub_value
from storeplane_runtime.errors import Unavailable
from storeplane_runtime.event_ids import new_event_id
from storeplane_runtime.idempotency import RETENTION

# The (caller, request_id) whose stored answer a write leaves showing the customer.
RequestKey = tuple[str, str]

# Random card numbers collide rarely (a billion per prefix); a run of collisions means the prefix is nearly used up.
_CARD_ATTEMPTS = 20


def _publish(uow: UnitOfWork, event: CustomerEvent) -> None:
    message, store_id = events.event_message(event)
    uow.publish(message, subject=event.customer_id, store_id=store_id)


def _new_card(uow: UnitOfWork, card_prefix: str, now: datetime) -> str:
    for _ in range(_CARD_ATTEMPTS):
        number = new_card_number(card_prefix)
        if storage.issue_card(uow.connection, number, now):
            return number
    raise Unavailable("no free loyalty card number found; try again", reason="CARD_NUMBERS_EXHAUSTED")


def _claim_changed_keys(uow: UnitOfWork, before: Profile, after: Profile, card_prefix: str, now: datetime) -> Profile:
    """Check the unique keys an update changes against every other customer, and issue a new card: the given one
    if it was never issued, else (an empty card: a lost one replaced) a new number. Returns `after` with its card."""
    conn = uow.connection
    old = before.keys()
    new = {k: v for k, v in after.keys().items() if old.get(k) != v}
    taken = storage.taken_key(conn, new)
    if taken is not None:
        raise taken
    if not after.loyalty_card_number:
        return replace(after, loyalty_card_number=_new_card(uow, card_prefix, now))
    if "loyalty_card_number" in new and not storage.issue_card(conn, after.loyalty_card_number, now):
        raise taken_error("loyalty_card_number")  # issued before: to an erased customer, or replaced
    return after


def register_customer(
    uow: UnitOfWork, profile: Profile, *, card_prefix: str, now: datetime, request: RequestKey
) -> Customer:
    """A new customer with the checked `profile` (a new card number when it gives none), and CustomerRegistered.
    EMAIL_TAKEN / PHONE_TAKEN / CARD_TAKEN when another customer holds a key, also when one registers concurrently
    (the unique index decides); CARD_TAKEN also for a given card issued before (cards are never reused)."""
    taken = storage.taken_key(uow.connection, profile.keys())
    if taken is not None:
        raise taken
    customer_id = new_event_id()
    for _ in range(1 if profile.loyalty_card_number else _CARD_ATTEMPTS):
        number = profile.loyalty_card_number or new_card_number(card_prefix)
        customer, event = register(customer_id, replace(profile, loyalty_card_number=number), now=now)
        if storage.create_customer(uow.connection, customer, request=request, now=now):
            _publish(uow, event)
            return customer
    if profile.loyalty_card_number:
        raise taken_error("loyalty_card_number")  # issued before: to an erased customer, or replaced
    raise Unavailable("no free loyalty card number found; try again", reason="CARD_NUMBERS_EXHAUSTED")


def update_customer(
    uow: UnitOfWork,
    customer_id: str,
    draft: ProfileDraft,
    paths: Collection[str],
    countries: Mapping[str, str | None],
    *,
    card_prefix: str,
    now: datetime,
    request: RequestKey,
) -> Customer:
    """The fields of `paths` set from `draft` (checked against the customer's current home store), and
    CustomerUpdated naming those that changed (no event when none did)."""
    conn = uow.connection
    current = storage.find_customer(conn, "id", customer_id, lock=True)
    if current is None or current.profile is None:
        raise CustomerNotFound.by("id", customer_id)
    profile = check_update(current.profile, draft, paths, countries, now=now)
    profile = _claim_changed_keys(uow, current.profile, profile, card_prefix, now)
    after, event = update(current, profile, now=now)
    if event is not None:
        storage.save_profile(conn, after)
        _publish(uow, event)
    storage.record_request(conn, *request, customer_id, now)
    return after


def erase_customer(
    uow: UnitOfWork,
    customer_id: str,
    *,
    now: datetime,
    answer: Callable[[Customer], bytes],
) -> Customer:
    """Erase the customer's personal data: the row keeps id, times and stats (every PII column NULL, so its email
    and phone are free again; its card number stays issued, never to be reused); the stored answers that showed the
    profile become `answer(tombstone)` (a retry learns of the erasure and runs nothing again); held sales lose the
    card number; the sent events about the customer leave the outbox now, the unsent ones and CustomerErased itself
    once sent (`forget_erased`). Erasing a tombstone changes nothing and publishes nothing."""
    conn = uow.connection
    current = storage.find_customer(conn, "id", customer_id, lock=True)
    if current is None:
        raise CustomerNotFound.by("id", customer_id)
    tombstone, event = erased(current, now=now)
    if event is not None:
        storage.save_profile(conn, tombstone)
        body = answer(tombstone)
        rewrite_answers(
            conn, [(caller, request_id, body) for caller, request_id in storage.requests_of(conn, customer_id)]
        )
        storage.drop_requests(conn, customer_id)
        forget_sent_events(conn, customer_id)
        if event.loyalty_card_number:  # sales held for a retry carry it (answers were rewritten above)
            scrub_value(conn, event.loyalty_card_number, events.CONSUMED, answers=False)
        storage.mark_erasure_pending(conn, customer_id, now)
        _publish(uow, event)
    return tombstone


def forget_erased(uow: UnitOfWork, now: datetime, limit: int) -> int:
    """Sweeper step: delete sent events of erased customers that were unsent at the erasure (and the erasure events),
    and forget which requests showed a customer once their stored answers are gone anyway. Returns the larger count,
    so the sweeper goes on while either has more."""
    conn = uow.connection
    forgotten = storage.forget_pending_events(conn, limit)
    pruned = storage.prune_requests(conn, now - RETENTION, limit)
    return max(forgotten, pruned)


def count_purchase(uow: UnitOfWork, purchase: Purchase, *, now: datetime) -> bool:
    """Add a sale to its customer's statistics once per sale id; False when it changed nothing (counted before, or
    a customer this service does not know)."""
    return _apply(uow, "sale", purchase.sale_id, purchase.customer_id, lambda s: s.after_purchase(purchase), now)


def count_refund(uow: UnitOfWork, refund: Refund, *, now: datetime) -> bool:
    """Take a return off its customer's statistics once per return id (before or after its sale)."""
    return _apply(uow, "return", refund.return_id, refund.customer_id, lambda s: s.after_refund(refund), now)


def _apply(
    uow: UnitOfWork,
    kind: str,
    document_id: str,
    customer_id: str,
    change: Callable[[PurchaseStats], PurchaseStats],
    now: datetime,
) -> bool:
    conn = uow.connection
    current = storage.find_customer(conn, "id", customer_id, lock=True)
    if current is None or not storage.first_application(conn, kind, document_id, now):
        return False
    after = change(current.stats)
    storage.save_stats(conn, customer_id, current.stats, after, now)
    return True
