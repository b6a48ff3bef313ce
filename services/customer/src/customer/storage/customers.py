"""Customer rows: read them (with their spend per currency, in one statement), write registrations, updates,
erasures and statistics, page through them for the export, and keep card numbers from ever being issued twice."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import Connection, Select, bindparam, literal, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError

from customer.domain import Consent, Customer, KeyTaken, Profile, PurchaseStats, taken_error
from customer.storage.constraints import violated_constraint
from customer.storage.erasures import record_request
from customer.storage.tables import (
    UNIQUE_KEYS,
    applied_documents,
    customer_spend,
    customers,
    issued_cards,
    metadata,
)
from storeplane_runtime.clock import as_utc
from storeplane_runtime.sql import Db, driver_sql, insert_for, is_postgres

_c = customers.c
_s = customer_spend.c
_COLUMNS = [*customers.c, _s.currency, _s.amount_minor]
# One statement for a customer and its spend (one row per currency, or one with NULLs when none).
_BY = select(*_COLUMNS).select_from(customers.outerjoin(customer_spend, _s.customer_id == _c.customer_id))
_BY_ID = _BY.where(_c.customer_id == bindparam("key"))
_BY_EMAIL = _BY.where(_c.email == bindparam("key"))
_BY_PHONE = _BY.where(_c.phone == bindparam("key"))
_BY_CARD = _BY.where(_c.loyalty_card_number == bindparam("key"))
_LOOKUPS = {"id": _BY_ID, "email": _BY_EMAIL, "phone": _BY_PHONE, "loyalty_card_number": _BY_CARD}
# PostgreSQL: the same reads as text run straight on the driver (storeplane_runtime.driver): FindCustomer is a till's
# hot path, and SQLAlchemy's execution context cost more than the round trip.
_PG_SELECT = (
    "SELECT "
    + ", ".join(f"c.{column.name}" for column in customers.c)
    + ", s.currency, s.amount_minor FROM customers c LEFT JOIN customer_spend s ON s.customer_id = c.customer_id"
)
_PG_LOOKUPS = {
    kind: f"{_PG_SELECT} WHERE c.{column} = %(key)s"
    for kind, column in (
        ("id", "customer_id"),
        ("email", "email"),
        ("phone", "phone"),
        ("loyalty_card_number", "loyalty_card_number"),
    )
}


def _customers_of(rows: Iterable[Any]) -> list[Customer]:
    """Customers from joined rows (consecutive rows of one customer carry one currency each)."""
    found: list[Customer] = []
    spend: dict[str, int] = {}
    current: Any = None
    for row in rows:
        if current is not None and row.customer_id != current.customer_id:
            found.append(_customer(current, spend))
            spend = {}
        current = row
        if row.currency is not None:
            spend[row.currency] = int(row.amount_minor)
    if current is not None:
        found.append(_customer(current, spend))
    return found


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def _customer(row: Any, spend: Mapping[str, int]) -> Customer:
    profile = None
    if row.erased_at is None:
        profile = Profile(
            given_name=row.given_name or "",
            family_name=row.family_name or "",
            email=row.email or "",
            phone=row.phone or "",
            loyalty_card_number=row.loyalty_card_number or "",
            marketing_email=Consent(bool(row.marketing_email), _utc(row.marketing_email_at)),
            marketing_sms=Consent(bool(row.marketing_sms), _utc(row.marketing_sms_at)),
            home_store_id=row.home_store_id or "",
        )
    stats = PurchaseStats(
        sale_count=int(row.sale_count),
        return_count=int(row.return_count),
        spend=dict(sorted(spend.items())),
        last_purchase_at=_utc(row.last_purchase_at),
        last_purchase_store_id=row.last_purchase_store_id or "",
    )
    return Customer(
        customer_id=row.customer_id,
        profile=profile,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
        erased_at=_utc(row.erased_at),
        stats=stats,
    )


def find_customer(conn: Db, kind: str, key: str, *, lock: bool = False) -> Customer | None:
    """The customer (or tombstone: a tombstone has no personal key, so only "id" finds one) whose `kind` ("id",
    "email", "phone", "loyalty_card_number") is `key`. `lock`: hold its row until the transaction ends."""
    if is_postgres(conn):
        # Lock the customer row alone (PostgreSQL refuses FOR UPDATE on the nullable side of an outer join).
        sql = _PG_LOOKUPS[kind] + (" FOR UPDATE OF c" if lock else "")
        found = _customers_of(driver_sql(conn, sql, {"key": key}))
    else:
        query: Select[Any] = _LOOKUPS[kind]
        found = _customers_of(conn.execute(query, {"key": key}))
    return found[0] if found else None


def _profile_values(profile: Profile | None) -> dict[str, Any]:
    if profile is None:  # erased: every personal column NULL (PII_COLUMNS), consents withdrawn
        return {
            "given_name": None,
            "family_name": None,
            "email": None,
            "phone": None,
            "loyalty_card_number": None,
            "home_store_id": None,
            "marketing_email": False,
            "marketing_email_at": None,
            "marketing_sms": False,
            "marketing_sms_at": None,
        }
    return {
        "given_name": profile.given_name,
        "family_name": profile.family_name,
        "email": profile.email or None,  # NULL, not "": many customers have no email, one may have each address
        "phone": profile.phone or None,
        "loyalty_card_number": profile.loyalty_card_number,
        "home_store_id": profile.home_store_id,
        "marketing_email": profile.marketing_email.granted,
        "marketing_email_at": profile.marketing_email.updated_at,
        "marketing_sms": profile.marketing_sms.granted,
        "marketing_sms_at": profile.marketing_sms.updated_at,
    }


def _taken(error: IntegrityError) -> KeyTaken | IntegrityError:
    key = UNIQUE_KEYS.get(violated_constraint(error, metadata) or "")
    return taken_error(key) if key else error


_KEY_COLUMNS = ("email", "phone", "loyalty_card_number")
# A key a customer does not give is NULL here, and `column = NULL` matches nothing.
_HOLDERS = select(_c.customer_id, _c.email, _c.phone, _c.loyalty_card_number).where(
    or_(*(_c[k] == bindparam(f"k_{k}") for k in _KEY_COLUMNS))
)
_PG_HOLDERS = (
    "SELECT customer_id, email, phone, loyalty_card_number FROM customers"
    " WHERE email = %(k_email)s OR phone = %(k_phone)s OR loyalty_card_number = %(k_loyalty_card_number)s"
)


def _holders(conn: Db, params: Mapping[str, str | None]) -> Iterable[Any]:
    if is_postgres(conn):
        return driver_sql(conn, _PG_HOLDERS, params)
    return conn.execute(_HOLDERS, params)


def taken_key(conn: Db, keys: Mapping[str, str], *, other_than: str = "") -> KeyTaken | None:
    """The error for the first of `keys` (field -> normalised value) another customer holds, or None. The unique
    indexes decide in the end (`create_customer`, `save_profile`); this gives the clean answer in the common case,
    without a refused statement (whose error PostgreSQL would log with the key in it)."""
    if not keys:
        return None
    params = {f"k_{k}": keys.get(k) for k in _KEY_COLUMNS}
    for row in _holders(conn, params):
        if row.customer_id == other_than:
            continue
        for field in _KEY_COLUMNS:
            if field in keys and getattr(row, field) == keys[field]:
                return taken_error(field)
    return None


def _new_row(customer: Customer) -> dict[str, Any]:
    return {
        "customer_id": customer.customer_id,
        **_profile_values(customer.profile),
        "created_at": customer.created_at,
        "updated_at": customer.updated_at,
        "erased_at": None,
        "sale_count": 0,
        "return_count": 0,
        "last_purchase_at": None,
        "last_purchase_store_id": None,
    }


_ROW_COLUMNS = [column.name for column in customers.c]
# Typed: a parameter in a SELECT list would otherwise be text (and a NULL timestamp refused).
_PG_VALUES = [f"CAST(%({c.name})s AS {c.type.compile(dialect=postgresql.dialect())})" for c in customers.c]
# PostgreSQL: the card issued, the customer and its request record in one statement (one round trip): the customer
# is written only if the card was never issued before.
_PG_CREATE = (
    "WITH card AS (INSERT INTO issued_cards (card_hash, issued_at) VALUES (%(card_hash)s, %(now)s)"
    " ON CONFLICT DO NOTHING RETURNING card_hash),"
    f" customer AS (INSERT INTO customers ({', '.join(_ROW_COLUMNS)})"
    f" SELECT {', '.join(_PG_VALUES)} WHERE EXISTS (SELECT 1 FROM card) RETURNING customer_id),"
    " request AS (INSERT INTO customer_requests (caller, request_id, customer_id, created_at)"
    " SELECT %(caller)s, %(request_id)s, customer_id, %(now)s FROM customer ON CONFLICT DO NOTHING)"
    " SELECT count(*) AS created FROM customer"
)


def create_customer(conn: Connection, customer: Customer, *, request: tuple[str, str], now: datetime) -> bool:
    """Issue the customer's card and insert the customer, remembering that the answer of `request` (caller,
    request_id) shows it. False, and nothing written, when the card number was issued before (to anyone, ever); the
    KeyTaken of a unique index that refuses the customer (a concurrent registration took a key first)."""
    assert customer.profile is not None
    number = customer.profile.loyalty_card_number
    row = _new_row(customer)
    try:
        if is_postgres(conn):
            params = {**row, "card_hash": card_hash(number), "now": now, "caller": request[0], "request_id": request[1]}
            return bool(driver_sql(conn, _PG_CREATE, params).fetchone().created)
        if not issue_card(conn, number, now):
            return False
        conn.execute(customers.insert(), row)
    except IntegrityError as error:
        raise _taken(error) from None  # its message carries the statement's parameters: personal data
    record_request(conn, *request, customer.customer_id, now)
    return True


def save_profile(conn: Connection, customer: Customer) -> None:
    """Write the customer's profile (or, for a tombstone, NULL every personal column) and times."""
    values = {**_profile_values(customer.profile), "updated_at": customer.updated_at, "erased_at": customer.erased_at}
    try:
        conn.execute(update(customers).where(_c.customer_id == customer.customer_id).values(values))
    except IntegrityError as error:
        raise _taken(error) from None


def transaction_failed(conn: Connection) -> bool:
    """Whether the transaction can only be rolled back now (PostgreSQL, after a refused statement such as a unique
    violation); SQLite undoes only the statement."""
    if not is_postgres(conn):
        return False
    driver = conn.connection.driver_connection
    return bool(driver.info.transaction_status == psycopg.pq.TransactionStatus.INERROR)  # type: ignore[union-attr]


def card_hash(number: str) -> str:
    return hashlib.sha256(number.encode()).hexdigest()


def card_was_issued(conn: Db, number: str) -> bool:
    query = select(issued_cards.c.card_hash).where(issued_cards.c.card_hash == card_hash(number))
    return conn.execute(query).first() is not None


def issue_card(conn: Connection, number: str, now: datetime) -> bool:
    """Record `number` as issued; False when it was issued before (to anyone, ever), and then nothing changed. Two
    transactions issuing one number: the second waits for the first and gets False if it commits."""
    statement = insert_for(conn, issued_cards).values(card_hash=card_hash(number), issued_at=now)
    return conn.execute(statement.on_conflict_do_nothing().returning(issued_cards.c.card_hash)).first() is not None


def save_stats(conn: Connection, customer_id: str, before: PurchaseStats, after: PurchaseStats, now: datetime) -> None:
    """Write the statistics (a change to them is a change of the customer: `updated_at` moves, the export sees it)."""
    conn.execute(
        update(customers)
        .where(_c.customer_id == customer_id)
        .values(
            sale_count=after.sale_count,
            return_count=after.return_count,
            last_purchase_at=after.last_purchase_at,
            last_purchase_store_id=after.last_purchase_store_id or None,
            updated_at=now,
        )
    )
    for currency, amount in after.spend.items():
        if before.spend.get(currency) == amount:
            continue
        statement = insert_for(conn, customer_spend).values(
            customer_id=customer_id, currency=currency, amount_minor=amount
        )
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=[_s.customer_id, _s.currency], set_={"amount_minor": statement.excluded.amount_minor}
            )
        )


def first_application(conn: Connection, kind: str, document_id: str, now: datetime) -> bool:
    """Record that sale or return `document_id` was counted; False when it was already (nothing changed)."""
    statement = insert_for(conn, applied_documents).values(kind=kind, document_id=document_id, applied_at=now)
    inserted = statement.on_conflict_do_nothing().returning(applied_documents.c.kind)
    return conn.execute(inserted).first() is not None


def export_page(
    conn: Db,
    *,
    since: datetime | None,
    after: tuple[datetime, str] | None,
    include_erased: bool,
    limit: int,
) -> list[Customer]:
    """The next `limit` customers in (updated_at, customer_id) order, after the key `after` (keyset paging: each page
    is one short indexed read, whatever the table's size), changed at or after `since`."""
    ids = select(_c.customer_id, _c.updated_at).order_by(_c.updated_at, _c.customer_id).limit(limit)
    if since is not None:
        ids = ids.where(_c.updated_at >= since)
    if after is not None:
        key = tuple_(literal(after[0], _c.updated_at.type), literal(after[1], _c.customer_id.type))
        ids = ids.where(tuple_(_c.updated_at, _c.customer_id) > key)
    if not include_erased:
        ids = ids.where(_c.erased_at.is_(None))
    page = ids.subquery()
    query = (
        select(*_COLUMNS)
        .select_from(
            page.join(customers, _c.customer_id == page.c.customer_id).outerjoin(
                customer_spend, _s.customer_id == _c.customer_id
            )
        )
        .order_by(_c.updated_at, _c.customer_id, _s.currency)
    )
    return _customers_of(conn.execute(query))
