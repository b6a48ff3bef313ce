"""Sales, returns and the terminals' receipt counters."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, update

from checkout.domain.refunds import LineRefund
from checkout.domain.sales import ReturnedLine, ReturnReason, Sale, SaleLine, SaleReturn
from checkout.domain.tenders import PaidTender, Tender, TenderKind
from checkout.storage.tables import receipt_counters, sale_returns, sales
from storeplane_runtime.clock import as_utc
from storeplane_runtime.sql import Db, insert_for, is_postgres

_s = sales
_r = sale_returns
_c = receipt_counters


def _next_numbers_statement(conn: Db) -> Any:
    """The counter upsert of this connection's dialect, built once per dialect."""
    dialect = "postgresql" if is_postgres(conn) else "sqlite"
    stmt = _NEXT_NUMBERS.get(dialect)
    if stmt is None:
        insert = insert_for(conn, _c).values(
            store_id=bindparam("k_store"),
            terminal_id=bindparam("k_terminal"),
            kind=bindparam("k_kind"),
            last_number=bindparam("k_count"),
        )
        stmt = _NEXT_NUMBERS[dialect] = insert.on_conflict_do_update(
            index_elements=[_c.c.store_id, _c.c.terminal_id, _c.c.kind],
            set_={"last_number": _c.c.last_number + insert.excluded.last_number},
        ).returning(_c.c.last_number)
    return stmt


_NEXT_NUMBERS: dict[str, Any] = {}


def next_receipt_numbers(conn: Db, store_id: str, terminal_id: str, kind: str, count: int = 1) -> int:
    """The first of the terminal's next `count` numbers of `kind` (the rest follow it); the counter row stays locked
    until the transaction ends, so numbers of committed sales have no gaps and never repeat."""
    params = {"k_store": store_id, "k_terminal": terminal_id, "k_kind": kind, "k_count": count}
    return int(conn.execute(_next_numbers_statement(conn), params).scalar_one()) - count + 1


def next_receipt_number(conn: Db, store_id: str, terminal_id: str, kind: str) -> int:
    """The terminal's next number of `kind` (see next_receipt_numbers)."""
    return next_receipt_numbers(conn, store_id, terminal_id, kind)


def _tender_json(tender: Tender) -> list[Any]:
    return [tender.kind.value, tender.amount, tender.reference]


def _tender_of(raw: list[Any], currency: str) -> Tender:
    return Tender(TenderKind(raw[0]), int(raw[1]), currency, raw[2])


def _sale_line_json(line: SaleLine) -> list[Any]:
    return [
        line.line_id,
        line.sku,
        line.barcode,
        line.name,
        line.quantity,
        line.unit_price,
        line.tax_class,
        line.tax_rate_ppm,
        line.discount,
        line.points_allocated,
        line.returned_quantity,
    ]


def _sale_line_of(raw: list[Any]) -> SaleLine:
    line_id, sku, barcode, name, quantity, price, tax_class, rate, discount, points, returned = raw
    return SaleLine(
        str(line_id),
        sku,
        barcode,
        name,
        int(quantity),
        int(price),
        tax_class,
        int(rate),
        int(discount),
        int(points),
        int(returned),
    )


def _sale_row(sale: Sale) -> dict[str, Any]:
    return {
        "sale_id": sale.sale_id,
        "basket_id": sale.basket_id or None,
        "client_sale_id": sale.client_sale_id or None,
        "store_id": sale.store_id,
        "terminal_id": sale.terminal_id,
        "cashier_id": sale.cashier_id,
        "customer_id": sale.customer_id,
        "currency": sale.currency,
        "tax_inclusive": sale.tax_inclusive,
        "lines": [_sale_line_json(line) for line in sale.lines],
        "tenders": [[*_tender_json(p.tender), p.applied] for p in sale.tenders],
        "subtotal": sale.subtotal,
        "discount_total": sale.discount_total,
        "tax_total": sale.tax_total,
        "total": sale.total,
        "points_redeemed": sale.points_redeemed,
        "cash_rounding": sale.cash_rounding,
        "amount_paid": sale.amount_paid,
        "change_due": sale.change_due,
        "cash_increment": sale.cash_increment,
        "completed_at": sale.completed_at,
        "offline": sale.offline,
        "receipt_number": sale.receipt_number,
        "receipt_lines": list(sale.receipt_lines),
    }


_INSERT_SALE = _s.insert()  # built once; the values come as parameters


def insert_sale(conn: Db, sale: Sale) -> None:
    conn.execute(_INSERT_SALE, _sale_row(sale))


def insert_sales(conn: Db, sales: Sequence[Sale]) -> None:
    """Several sales in one round trip (an offline upload's chunk)."""
    if sales:
        conn.execute(_INSERT_SALE, [_sale_row(sale) for sale in sales])


def _sale_of(row: Any, return_ids: Sequence[str] = ()) -> Sale:
    return Sale(
        sale_id=row.sale_id,
        basket_id=row.basket_id or "",
        client_sale_id=row.client_sale_id or "",
        store_id=row.store_id,
        terminal_id=row.terminal_id,
        cashier_id=row.cashier_id,
        customer_id=row.customer_id,
        currency=row.currency,
        tax_inclusive=bool(row.tax_inclusive),
        lines=tuple(_sale_line_of(raw) for raw in row.lines),
        tenders=tuple(PaidTender(_tender_of(raw, row.currency), int(raw[3])) for raw in row.tenders),
        subtotal=int(row.subtotal),
        discount_total=int(row.discount_total),
        tax_total=int(row.tax_total),
        total=int(row.total),
        points_redeemed=int(row.points_redeemed),
        cash_rounding=int(row.cash_rounding),
        amount_paid=int(row.amount_paid),
        change_due=int(row.change_due),
        cash_increment=int(row.cash_increment),
        completed_at=as_utc(row.completed_at),
        offline=bool(row.offline),
        receipt_number=row.receipt_number,
        receipt_lines=tuple(row.receipt_lines),
        return_ids=tuple(return_ids),
    )


def _return_ids(conn: Db, sale_ids: Sequence[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {sale_id: [] for sale_id in sale_ids}
    if sale_ids:
        query = (
            select(_r.c.original_sale_id, _r.c.return_id)
            .where(_r.c.original_sale_id.in_(list(sale_ids)))
            .order_by(_r.c.returned_at, _r.c.return_id)
        )
        for sale_id, return_id in conn.execute(query):
            found[sale_id].append(return_id)
    return found


def find_sale(conn: Db, sale_id: str, *, lock: bool = False) -> Sale | None:
    query = select(_s).where(_s.c.sale_id == sale_id)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
    return _sale_of(row, _return_ids(conn, [sale_id])[sale_id]) if row is not None else None


def sale_store(conn: Db, sale_id: str) -> str | None:
    store: str | None = conn.execute(select(_s.c.store_id).where(_s.c.sale_id == sale_id)).scalar()
    return store


def sale_of_client_id(conn: Db, client_sale_id: str) -> str | None:
    sale_id: str | None = conn.execute(select(_s.c.sale_id).where(_s.c.client_sale_id == client_sale_id)).scalar()
    return sale_id


def sales_of_client_ids(conn: Db, client_sale_ids: Sequence[str]) -> dict[str, str]:
    """client_sale_id -> sale id of those already recorded."""
    if not client_sale_ids:
        return {}
    query = select(_s.c.client_sale_id, _s.c.sale_id).where(_s.c.client_sale_id.in_(list(client_sale_ids)))
    return {client_sale_id: sale_id for client_sale_id, sale_id in conn.execute(query)}


def save_returned_quantities(conn: Db, sale: Sale) -> None:
    conn.execute(
        update(_s).where(_s.c.sale_id == sale.sale_id).values(lines=[_sale_line_json(line) for line in sale.lines])
    )


def list_sales(
    conn: Db,
    store_id: str,
    *,
    start: datetime | None,
    end: datetime | None,
    customer_id: str,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[Sale]:
    """Sales of a store, newest first (completed_at, then sale id, both descending), after the keyset `after`."""
    query = select(_s).where(_s.c.store_id == store_id)
    if start is not None:
        query = query.where(_s.c.completed_at >= start)
    if end is not None:
        query = query.where(_s.c.completed_at < end)
    if customer_id:
        query = query.where(_s.c.customer_id == customer_id)
    if after is not None:
        when, sale_id = after
        query = query.where(or_(_s.c.completed_at < when, and_(_s.c.completed_at == when, _s.c.sale_id < sale_id)))
    rows = conn.execute(query.order_by(_s.c.completed_at.desc(), _s.c.sale_id.desc()).limit(limit)).all()
    ids = _return_ids(conn, [row.sale_id for row in rows])
    return [_sale_of(row, ids[row.sale_id]) for row in rows]


def insert_return(conn: Db, sale_return: SaleReturn) -> None:
    conn.execute(
        _r.insert().values(
            return_id=sale_return.return_id,
            original_sale_id=sale_return.original_sale_id,
            original_store_id=sale_return.original_store_id,
            store_id=sale_return.store_id,
            terminal_id=sale_return.terminal_id,
            cashier_id=sale_return.cashier_id,
            customer_id=sale_return.customer_id,
            currency=sale_return.currency,
            lines=[
                [
                    line.line_id,
                    line.sku,
                    line.name,
                    line.restock,
                    line.refund.quantity,
                    line.refund.refund_amount,
                    line.refund.tax,
                    line.refund.points_returned,
                ]
                for line in sale_return.lines
            ],
            refund_tenders=[_tender_json(t) for t in sale_return.refund_tenders],
            amount_refunded=sale_return.amount_refunded,
            cash_rounding=sale_return.cash_rounding,
            points_returned=sale_return.points_returned,
            reason=sale_return.reason.value,
            note=sale_return.note,
            returned_at=sale_return.returned_at,
            receipt_number=sale_return.receipt_number,
            receipt_lines=list(sale_return.receipt_lines),
        )
    )


def find_return(conn: Db, return_id: str) -> SaleReturn | None:
    row = conn.execute(select(_r).where(_r.c.return_id == return_id)).first()
    if row is None:
        return None
    return SaleReturn(
        return_id=row.return_id,
        original_sale_id=row.original_sale_id,
        original_store_id=row.original_store_id,
        store_id=row.store_id,
        terminal_id=row.terminal_id,
        cashier_id=row.cashier_id,
        customer_id=row.customer_id,
        currency=row.currency,
        lines=tuple(
            ReturnedLine(
                raw[0], raw[1], raw[2], bool(raw[3]), LineRefund(int(raw[4]), int(raw[5]), int(raw[6]), int(raw[7]))
            )
            for raw in row.lines
        ),
        refund_tenders=tuple(_tender_of(raw, row.currency) for raw in row.refund_tenders),
        amount_refunded=int(row.amount_refunded),
        cash_rounding=int(row.cash_rounding),
        points_returned=int(row.points_returned),
        reason=ReturnReason(row.reason),
        note=row.note,
        returned_at=as_utc(row.returned_at),
        receipt_number=row.receipt_number,
        receipt_lines=tuple(row.receipt_lines),
    )
