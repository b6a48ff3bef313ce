"""Stock's ERP imports (items, stock levels) as kinds of the shared streamed-import engine
(`storeplane_runtime.imports`): their rows, rules and writes, and the ImportSummary both answer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import NamedTuple

from pos.stock.v1 import stock_pb2
from stock import events, storage
from stock.domain import (
    MAX_STOCK_QUANTITY,
    ChangeReason,
    Item,
    Level,
    LevelChange,
    StockPolicy,
    item_violations,
    reorder_point_crossed,
    sku_problem,
)
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.imports import ChunkResult, ImportKind, Tally, run_import
from storeplane_runtime.outbox import PendingEvent
from storeplane_runtime.stores import MINOR_UNITS, Store

__all__ = ["LevelRow", "item_import", "run_import", "stock_level_import"]  # run_import: the servicer runs both with it


def _summary(tally: Tally) -> stock_pb2.ImportSummary:
    return stock_pb2.ImportSummary(
        received=tally.received,
        created=tally.created,
        updated=tally.updated,
        unchanged=tally.unchanged,
        rejected=tally.rejected,
        rejected_rows=[
            stock_pb2.RejectedRow(row_number=r.row_number, key=r.key, reason=r.reason) for r in tally.rejected_rows
        ],
        rejected_rows_truncated=tally.rejected_rows_truncated,
    )


# --- stock levels -------------------------------------------------------------------------------------------


class LevelRow(NamedTuple):
    """A checked stock level row (a tuple: imports hold thousands of them)."""

    store_id: str
    sku: str
    on_hand: int


def _level_rows(message: stock_pb2.ImportStockLevelsRequest) -> Sequence[stock_pb2.StockLevelRow]:
    if message.HasField("row"):
        return [message.row, *message.rows]
    return message.rows


def stock_level_import(
    stores: Mapping[str, Store], policy: StockPolicy
) -> ImportKind[stock_pb2.ImportStockLevelsRequest, stock_pb2.StockLevelRow, LevelRow, stock_pb2.ImportSummary]:
    def validate(row: stock_pb2.StockLevelRow) -> LevelRow | str:
        store_id, sku, on_hand = row.store_id, row.sku, row.on_hand
        if store_id not in stores:
            return f"unknown store {store_id[:64]!r}" if store_id else "store_id is empty"
        problem = sku_problem(sku)
        if problem:
            return f"sku {problem}"
        if not 0 <= on_hand <= MAX_STOCK_QUANTITY:
            return f"on_hand must be between 0 and {MAX_STOCK_QUANTITY}"
        return LevelRow(store_id, sku, on_hand)

    def apply(uow: UnitOfWork, rows: Sequence[tuple[int, LevelRow]], now: datetime, reference: str) -> ChunkResult:
        # Thousands of rows per chunk: one statement reads, locks and sets the existing levels (storage.import_on_hand),
        # no Level or LevelChange per row, and the events come from one template (events.LevelChangeEvents). The rules
        # are those of every other change of a level.
        result = ChunkResult()
        conn = uow.connection
        found = storage.import_on_hand(conn, [r for _, r in rows], now)
        created: list[LevelRow] = []
        pending: list[PendingEvent] = []
        changes = events.LevelChangeEvents(
            source=uow.source, headers=uow.trace_headers, reason=ChangeReason.IMPORT, reference_id=reference, at=now
        )
        for number, r in rows:
            store_id, sku, on_hand = r
            entry = found.get((store_id, sku))
            if entry is None:
                result.rejected.append((number, f"{store_id}/{sku}", f"unknown SKU {sku}"))
                continue
            point, on_hand_before, reserved = entry
            if on_hand_before is None or reserved is None:
                on_hand_before = reserved = 0
                created.append(r)
                if not on_hand:
                    continue  # a new level of 0: created, but nothing changed
            elif on_hand_before == on_hand:
                result.unchanged += 1
                continue
            else:
                result.updated += 1
            pending.append(
                changes.changed(
                    store_id, sku, on_hand=on_hand, reserved=reserved, on_hand_delta=on_hand - on_hand_before
                )
            )
            point = policy.reorder_point_of(point)
            if reorder_point_crossed(on_hand_before - reserved, on_hand - reserved, point):
                before = Level(store_id, sku, on_hand_before, reserved)
                change = LevelChange(
                    before, Level(store_id, sku, on_hand, reserved, now), ChangeReason.IMPORT, reference
                )
                pending.append(changes.low(change, point))
        result.created = len(created)
        storage.insert_imported_levels(conn, created, now)
        uow.publish_prepared(pending)
        return result

    return ImportKind(
        method="/pos.stock.v1.StockService/ImportStockLevels",
        rows_of=_level_rows,
        key_of=lambda r: f"{r.store_id}/{r.sku}",
        dedupe_key=itemgetter(0, 1),  # (store_id, sku)
        validate=validate,
        apply=apply,
        summarise=_summary,
        summary_type=stock_pb2.ImportSummary,
        independent_keys=True,
    )


# --- items --------------------------------------------------------------------------------------------------


def _items(message: stock_pb2.ImportItemsRequest) -> Sequence[stock_pb2.Item]:
    if message.HasField("item"):
        return [message.item, *message.items]
    return message.items


def item_import() -> ImportKind[stock_pb2.ImportItemsRequest, stock_pb2.Item, Item, stock_pb2.ImportSummary]:
    currencies = set(MINOR_UNITS)

    def validate(item: stock_pb2.Item) -> Item | str:
        prices = [(p.currency_code, p.amount_minor) for p in item.prices]
        reorder_point = item.reorder_point if item.HasField("reorder_point") else None
        violations = item_violations(
            item.sku, item.name, item.tax_class, list(item.barcodes), prices, reorder_point, currencies
        )
        if violations:
            return "; ".join(f"{v.field}: {v.description}" for v in violations)
        return Item(
            sku=item.sku,
            name=item.name,
            tax_class=item.tax_class,
            barcodes=tuple(item.barcodes),
            prices=dict(prices),
            reorder_point=reorder_point,
        )

    def apply(uow: UnitOfWork, rows: Sequence[tuple[int, Item]], now: datetime, reference: str) -> ChunkResult:
        result = ChunkResult()
        session = uow.connection
        existing = storage.find_items(session, {i.sku for _, i in rows})
        owners = storage.barcode_owners(session, {b for _, i in rows for b in i.barcodes})
        created: list[Item] = []
        updated: list[Item] = []
        for number, item in rows:
            taken = [(b, owners[b]) for b in item.barcodes if owners.get(b, item.sku) != item.sku]
            if taken:
                b, other = taken[0]
                result.rejected.append((number, item.sku, f"barcode {b} already used by SKU {other}"))
                continue
            before = existing.get(item.sku)
            if before is not None and before.same_content(item):
                result.unchanged += 1
                continue
            if before is not None:
                for b in before.barcodes:
                    if owners.get(b) == item.sku:
                        del owners[b]  # released: a later row of this chunk may take it
            saved = Item(
                sku=item.sku,
                name=item.name,
                tax_class=item.tax_class,
                barcodes=item.barcodes,
                prices=item.prices,
                reorder_point=item.reorder_point,
                revision=(before.revision if before else 0) + 1,
                updated_at=now,
            )
            owners.update({b: item.sku for b in item.barcodes})
            (updated if before is not None else created).append(saved)
            uow.publish(events.item_updated(saved, created=before is None, correlation_id=reference), subject=item.sku)
        result.created, result.updated = len(created), len(updated)
        storage.save_items(session, created, updated)
        return result

    return ImportKind(
        method="/pos.stock.v1.StockService/ImportItems",
        rows_of=_items,
        key_of=lambda i: i.sku,
        dedupe_key=lambda i: i.sku,
        validate=validate,
        apply=apply,
        summarise=_summary,
        summary_type=stock_pb2.ImportSummary,
    )
