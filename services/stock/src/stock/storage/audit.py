"""The records beside the levels: hand adjustments, accepted discrepancies, sales and returns already applied."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from stock.domain import Discrepancy, LevelChange
from stock.storage.tables import applied_documents, stock_adjustments, stock_discrepancies
from storeplane_runtime.sql import Db, insert_for

_ADJUSTMENT = stock_adjustments.insert()
_DISCREPANCY = stock_discrepancies.insert()


def record_adjustment(conn: Db, change: LevelChange, *, note: str, caller: str, now: datetime) -> None:
    """Who adjusted a level by hand, by how much and why."""
    conn.execute(
        _ADJUSTMENT,
        {
            "store_id": change.after.store_id,
            "sku": change.after.sku,
            "delta": change.on_hand_delta,
            "reason": change.adjustment_reason,
            "note": note,
            "request_id": change.reference_id,
            "caller": caller,
            "created_at": now,
        },
    )


def record_discrepancies(conn: Db, discrepancies: Sequence[Discrepancy], now: datetime) -> None:
    if discrepancies:
        conn.execute(
            _DISCREPANCY,
            [
                {
                    "store_id": d.change.after.store_id,
                    "sku": d.change.after.sku,
                    "kind": d.kind.value,
                    "quantity": d.quantity,
                    "on_hand_after": d.change.after.on_hand,
                    "reference_id": d.change.reference_id,
                    "recorded_at": now,
                }
                for d in discrepancies
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
