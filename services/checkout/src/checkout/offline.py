"""UploadOfflineSales: sales a store made while offline, recorded through the kit's streamed-import engine (chunks of
sales per transaction, bounded memory whatever the stream length, the stream's request id kept with its answer).

Each sale is deduplicated by its client_sale_id, across uploads and within one stream; its amounts are recomputed from
the store's rules and the prices charged; it is never refused for stock. A sale that cannot be recorded (unknown
store, wrong currency, tenders not covering the recomputed total...) is REJECTED with a reason and kept as sent in the
quarantine table, where an operator lists it and submits it again (`resubmit`): nothing a store sends is lost.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import select, update

from checkout import events, storage
from checkout.domain.baskets import MAX_ID_LENGTH, MAX_QUANTITY, MAX_SKU_LENGTH
from checkout.domain.pricing import PricedLine, Pricing, price_basket, tax_rate
from checkout.domain.receipts import sale_receipt
from checkout.domain.sales import receipt_number, sale_of
from checkout.domain.tenders import Settlement, Tender, TenderKind, settle
from checkout.storage.tables import offline_quarantine
from checkout.use_cases import Rules
from pos.checkout.v1 import checkout_pb2
from storeplane_runtime.clock import as_utc
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.errors import DomainError, identifier_problem
from storeplane_runtime.event_ids import new_event_id
from storeplane_runtime.imports import ChunkResult, ImportKind, Tally
from storeplane_runtime.sql import Db
from storeplane_runtime.timestamps import from_timestamp

METHOD = "/pos.checkout.v1.CheckoutService/UploadOfflineSales"
MAX_LINES = 1000
MAX_TENDERS = 20
DEFAULT_TAX_CLASS = "standard"  # an unknown SKU sent without a tax class: the sale happened, taxed at the usual rate
ACCEPTED = checkout_pb2.OFFLINE_SALE_OUTCOME_ACCEPTED
DUPLICATE = checkout_pb2.OFFLINE_SALE_OUTCOME_DUPLICATE
REJECTED = checkout_pb2.OFFLINE_SALE_OUTCOME_REJECTED
TENDER_KINDS = {checkout_pb2.TenderType.Value(f"TENDER_TYPE_{kind.value}"): kind for kind in TenderKind}


class Rejected(Exception):
    """An offline sale that cannot be recorded as sent; `reason` says why (kept with it in quarantine)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def shape_problem(sale: checkout_pb2.OfflineSale, rules: Rules) -> str | None:
    """What makes the sale unrecordable before anything is read (None: nothing)."""
    if problem := identifier_problem(sale.client_sale_id, MAX_ID_LENGTH):
        return f"client_sale_id {problem}"
    store = rules.stores.get(sale.store_id)
    if store is None:
        return f"UNKNOWN_STORE: {sale.store_id[:64]!r}"
    if sale.currency_code != store.currency:
        return f"CURRENCY_MISMATCH: the store takes {store.currency}, the sale says {sale.currency_code[:8]!r}"
    for name in ("terminal_id", "cashier_id"):
        if problem := identifier_problem(getattr(sale, name), MAX_ID_LENGTH):
            return f"{name} {problem}"
    if sale.customer_id and (problem := identifier_problem(sale.customer_id, MAX_ID_LENGTH)):
        return f"customer_id {problem}"
    if not sale.HasField("sold_at"):
        return "sold_at is required"
    if not 1 <= len(sale.lines) <= MAX_LINES:
        return f"a sale has 1 to {MAX_LINES} lines"
    if len(sale.tenders) > MAX_TENDERS:
        return f"at most {MAX_TENDERS} tenders"
    for i, line in enumerate(sale.lines):
        if problem := identifier_problem(line.sku, MAX_SKU_LENGTH):
            return f"lines[{i}].sku {problem}"
        if not 1 <= line.quantity <= MAX_QUANTITY:
            return f"lines[{i}].quantity must be between 1 and {MAX_QUANTITY}"
        if line.unit_price.currency_code != store.currency or line.unit_price.amount_minor < 0:
            return f"CURRENCY_MISMATCH: lines[{i}].unit_price must be a non-negative amount in {store.currency}"
    for i, tender in enumerate(sale.tenders):
        if tender.type not in TENDER_KINDS:
            return f"tenders[{i}].type is not a tender type"
    return None


@dataclass
class Known:
    """What a chunk of sales looked up once for all of them: sales recorded already (client id -> sale id; None:
    look each up), and the tax classes of the SKUs seen."""

    sales: dict[str, str] | None = None
    tax_classes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Priced:
    """An offline sale that can be recorded, priced by the store's rules, waiting for its receipt number."""

    sale: checkout_pb2.OfflineSale
    pricing: Pricing
    settlement: Settlement


def _priced(conn: Db, rules: Rules, sale: checkout_pb2.OfflineSale, known: Known) -> _Priced:
    """The sale's amounts (its shape checked) recomputed from the store's rules and the prices charged; Rejected
    when it cannot be."""
    store = rules.stores[sale.store_id]
    lines = []
    for line in sale.lines:
        tax_class = line.tax_class
        if not tax_class:
            if line.sku not in known.tax_classes:
                item = storage.find_item(conn, sku=line.sku)
                known.tax_classes[line.sku] = item.tax_class if item is not None else DEFAULT_TAX_CLASS
            tax_class = known.tax_classes[line.sku]
        try:
            rate = tax_rate(store, tax_class)
        except DomainError as exc:
            raise Rejected(f"{exc.reason}: {exc.message}") from exc
        lines.append(PricedLine(line.sku, line.quantity, line.unit_price.amount_minor, tax_class, rate))
    tenders = [
        Tender(TENDER_KINDS[t.type], t.amount.amount_minor, t.amount.currency_code, t.reference[:64])
        for t in sale.tenders
    ]
    try:
        pricing = price_basket(store, lines)
        return _Priced(sale, pricing, settle(store, pricing.total, tenders))
    except DomainError as exc:
        raise Rejected(f"{exc.reason}: {exc.message}") from exc


def record_many(
    uow: UnitOfWork, rules: Rules, sales: Sequence[checkout_pb2.OfflineSale], known: Known | None = None
) -> list[tuple[int, str] | Rejected]:
    """Record offline sales: per sale, in order, its outcome (ACCEPTED or DUPLICATE) and sale id, or why it was
    Rejected. The accepted ones take their receipt numbers a block per terminal (counters locked in key order) and
    are inserted in one statement."""
    known = known or Known()
    conn = uow.connection
    outcomes: list[tuple[int, str] | Rejected] = []
    accepted: list[tuple[str, _Priced]] = []
    for sale in sales:
        try:
            shape = shape_problem(sale, rules)
            if shape is not None:
                raise Rejected(shape)
            if known.sales is None:
                recorded_as = storage.sale_of_client_id(conn, sale.client_sale_id)
            else:
                recorded_as = known.sales.get(sale.client_sale_id)
            if recorded_as is not None:
                outcomes.append((DUPLICATE, recorded_as))
                continue
            priced = _priced(conn, rules, sale, known)
        except Rejected as rejected:
            outcomes.append(rejected)
            continue
        sale_id = new_event_id()
        if known.sales is not None:
            known.sales[sale.client_sale_id] = sale_id  # the same sale again in this list: a duplicate
        accepted.append((sale_id, priced))
        outcomes.append((ACCEPTED, sale_id))
    blocks = Counter((p.sale.store_id, p.sale.terminal_id) for _, p in accepted)
    numbers = {
        key: storage.next_receipt_numbers(conn, key[0], key[1], "S", count) for key, count in sorted(blocks.items())
    }
    recorded_sales = []
    for sale_id, priced in accepted:
        sale, key = priced.sale, (priced.sale.store_id, priced.sale.terminal_id)
        number, numbers[key] = numbers[key], numbers[key] + 1
        recorded = sale_of(
            sale_id=sale_id,
            basket_id="",
            client_sale_id=sale.client_sale_id,
            store_id=sale.store_id,
            terminal_id=sale.terminal_id,
            cashier_id=sale.cashier_id,
            customer_id=sale.customer_id,
            lines=[(str(i + 1), line.barcode[:64], line.name[:200] or line.sku) for i, line in enumerate(sale.lines)],
            pricing=priced.pricing,
            settlement=priced.settlement,
            completed_at=as_utc(from_timestamp(sale.sold_at)),
            offline=True,
            receipt_number=receipt_number(sale.store_id, sale.terminal_id, number),
        )
        recorded = replace(recorded, receipt_lines=sale_receipt(recorded, rules.stores[sale.store_id]))
        recorded_sales.append(recorded)
        event = events.sale_completed(
            recorded, loyalty_card_number=sale.loyalty_card_number[:32], hold=False, reservation=False
        )
        uow.publish(event, subject=recorded.customer_id, store_id=recorded.store_id)
    storage.insert_sales(conn, recorded_sales)
    return outcomes


def record(uow: UnitOfWork, rules: Rules, sale: checkout_pb2.OfflineSale) -> tuple[int, str]:
    """Record one offline sale (outcome ACCEPTED or DUPLICATE, and the sale id); Rejected when it cannot be."""
    [outcome] = record_many(uow, rules, [sale])
    if isinstance(outcome, Rejected):
        raise outcome
    return outcome


def quarantine(uow: UnitOfWork, sale: checkout_pb2.OfflineSale, reason: str, caller: str, now: datetime) -> None:
    """Keep a sale that could not be recorded, as sent (once per client_sale_id while it waits)."""
    conn = uow.connection
    waiting = conn.execute(
        select(offline_quarantine.c.id).where(
            offline_quarantine.c.client_sale_id == sale.client_sale_id[:200],
            offline_quarantine.c.resolved_at.is_(None),
        )
    ).first()
    if waiting is not None:
        conn.execute(update(offline_quarantine).where(offline_quarantine.c.id == waiting.id).values(reason=reason))
        return
    conn.execute(
        offline_quarantine.insert().values(
            client_sale_id=sale.client_sale_id[:200],
            store_id=sale.store_id[:200],
            reason=reason,
            sale=sale.SerializeToString(),
            caller=caller[:200],
            received_at=now,
        )
    )


@dataclass
class Results:
    """Per uploaded sale, its result, by row number (one small entry per sale: the answer lists them all)."""

    by_row: dict[int, checkout_pb2.OfflineSaleResult]
    lock: threading.Lock

    def answer(self, tally: Tally) -> checkout_pb2.UploadOfflineSalesResponse:
        results = [self.by_row[n] for n in sorted(self.by_row)]
        for rejected in tally.rejected_rows:  # rows the engine itself refused (another request id in the stream)
            if rejected.row_number not in self.by_row:
                results.append(
                    checkout_pb2.OfflineSaleResult(
                        client_sale_id=rejected.key, outcome=REJECTED, reason=rejected.reason
                    )
                )
        return checkout_pb2.UploadOfflineSalesResponse(
            accepted=sum(1 for r in results if r.outcome == ACCEPTED),
            duplicates=sum(1 for r in results if r.outcome == DUPLICATE),
            rejected=sum(1 for r in results if r.outcome == REJECTED),
            results=results,
        )


def upload_kind(
    rules: Rules, caller: str
) -> ImportKind[
    checkout_pb2.UploadOfflineSalesRequest,
    checkout_pb2.OfflineSale,
    checkout_pb2.OfflineSale,
    checkout_pb2.UploadOfflineSalesResponse,
]:
    """The engine's description of one upload stream (its results are collected per call)."""
    results = Results({}, threading.Lock())

    def apply(
        uow: UnitOfWork, rows: Sequence[tuple[int, checkout_pb2.OfflineSale]], now: datetime, request_id: str
    ) -> ChunkResult:
        chunk = ChunkResult()
        done: dict[int, checkout_pb2.OfflineSaleResult] = {}
        # Within a chunk every client_sale_id is distinct (the engine's dedupe key): one lookup serves them all.
        known = Known(storage.sales_of_client_ids(uow.connection, [sale.client_sale_id for _, sale in rows]))
        for (number, sale), recorded in zip(rows, record_many(uow, rules, [s for _, s in rows], known), strict=True):
            if isinstance(recorded, Rejected):
                quarantine(uow, sale, recorded.reason, caller, now)
                done[number] = checkout_pb2.OfflineSaleResult(
                    client_sale_id=sale.client_sale_id[:200], outcome=REJECTED, reason=recorded.reason
                )
                continue
            outcome, sale_id = recorded
            if outcome == ACCEPTED:
                chunk.created += 1
            else:
                chunk.unchanged += 1
            done[number] = checkout_pb2.OfflineSaleResult(
                client_sale_id=sale.client_sale_id, outcome=outcome, sale_id=sale_id
            )
        with results.lock:  # a chunk applied again after a conflict replaces its results
            results.by_row.update(done)
        return chunk

    def rows_of(message: checkout_pb2.UploadOfflineSalesRequest) -> Sequence[checkout_pb2.OfflineSale]:
        return [message.sale]

    return ImportKind(
        method=METHOD,
        rows_of=rows_of,
        key_of=lambda sale: sale.client_sale_id,
        dedupe_key=lambda sale: sale.client_sale_id,  # the same sale twice in a stream: never in one chunk
        validate=lambda sale: sale,  # every sale goes to `apply`: a rejected one is kept in quarantine there
        apply=apply,
        summarise=results.answer,
        summary_type=checkout_pb2.UploadOfflineSalesResponse,
    )


# --- quarantine: what an operator sees and submits again ------------------------------------------------------


@dataclass(frozen=True)
class Quarantined:
    """An offline sale waiting in quarantine: its id there, client id, store, why, when, and the sale as sent."""

    quarantine_id: int
    client_sale_id: str
    store_id: str
    reason: str
    received_at: datetime
    sale: checkout_pb2.OfflineSale


def list_quarantined(database: Database, *, limit: int = 100, after_id: int = 0) -> list[Quarantined]:
    """Sales waiting in quarantine, oldest first."""
    q = offline_quarantine
    query = select(q).where(q.c.resolved_at.is_(None), q.c.id > after_id).order_by(q.c.id).limit(limit)
    with database.read_engine.connect() as conn:
        return [
            Quarantined(
                int(row.id),
                row.client_sale_id,
                row.store_id,
                row.reason,
                as_utc(row.received_at),
                checkout_pb2.OfflineSale.FromString(row.sale),
            )
            for row in conn.execute(query)
        ]


def resubmit(
    database: Database, rules: Rules, quarantine_id: int, now: datetime, *, sale: checkout_pb2.OfflineSale | None = None
) -> checkout_pb2.OfflineSaleResult:
    """Record a quarantined sale again (as kept, or as corrected by the operator in `sale`); accepted or duplicate
    resolves it, a new rejection updates its reason."""
    q = offline_quarantine
    with UnitOfWork(database, source="checkout") as uow:
        row = uow.connection.execute(select(q).where(q.c.id == quarantine_id).with_for_update()).first()
        if row is None or row.resolved_at is not None:
            raise LookupError(f"no waiting quarantined sale {quarantine_id}")
        offered = sale if sale is not None else checkout_pb2.OfflineSale.FromString(row.sale)
        try:
            outcome, sale_id = record(uow, rules, offered)
        except Rejected as rejected:
            uow.rollback()
            with UnitOfWork(database, source="checkout") as again:
                again.connection.execute(update(q).where(q.c.id == quarantine_id).values(reason=rejected.reason))
                again.commit()
            return checkout_pb2.OfflineSaleResult(
                client_sale_id=offered.client_sale_id, outcome=REJECTED, reason=rejected.reason
            )
        uow.connection.execute(update(q).where(q.c.id == quarantine_id).values(resolved_at=now))
        uow.commit()
        return checkout_pb2.OfflineSaleResult(client_sale_id=offered.client_sale_id, outcome=outcome, sale_id=sale_id)
