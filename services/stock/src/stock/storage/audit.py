"""The records beside the levels: hand adjustments, accepted discrepancies, sales and returns already applied."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from stock.domain import LevelChange
from stock.storage.tables import Db, applied_documents, insert_for, stock_adjustments, stock_discrepancies

_ADJUSTMENT = stock_adjustments.insert()
_DISCREPANCY = stock_discrepancies.insert()


def record_adjustment(
    conn: Db, change: LevelChange, *, reason: str, note: str, request_id: str, caller: str, now: datetime
) -> None:
    conn.execute(
        _ADJUSTMENT,
        {
            "store_id": change.after.store_id,
            "sku": change.after.sku,
            "delta": change.on_hand_delta,
            "reason": reason,
            "note": note,
            "request_id": request_id,
            "caller": caller,
            "created_at": now,
        },
    )


def record_discrepancies(conn: Db, rows: Sequence[tuple[str, LevelChange, int]], now: datetime) -> None:
    """(kind, change, quantity) of facts accepted although they looked wrong."""
    if rows:
        conn.execute(
            _DISCREPANCY,
            [
                {
                    "store_id": c.after.store_id,
                    "sku": c.after.sku,
                    "kind": kind,
                    "quantity": quantity,
                    "on_hand_after": c.after.on_hand,
                    "reference_id": c.reference_id,
                    "recorded_at": now,
                }
                for kind, c, quantity in rows
            ],
        )


def first_application(conn: Db, kind: str, document_id: str, now: datetime) -> bool:
    """Record that a sale/return was applied; False if it had been already."""
    row = conn.execute(
        insert_for(conn, applied_documents)
        .values(kind=kind, document_id=document_id, applied_at=now)
        .on_conflict_do_nothing()
        .returning(applied_documents.c.kind)
    ).first()
    return row is not None
